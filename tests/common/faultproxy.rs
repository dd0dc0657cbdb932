//! A TCP proxy in front of the test S3 server that injects the faults object storage
//! shows in production: throttling (503 SlowDown), latency, connections dropped while
//! the request is sent or before its response, and response bodies cut short.
//!
//! Each accepted connection carries one request: the proxy reads it, decides its fate
//! from a seeded generator, and (unless the fault stops it) forwards it to the server on
//! a fresh connection with `Connection: close`, so the response ends at EOF and can be
//! cut anywhere. Counters of every fault injected let a test assert that it really
//! exercised what it claims.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Probabilities, per request, of each fault (at most one per request).
#[derive(Clone, Copy, Default, Debug)]
pub struct Faults {
    /// Answer `503 SlowDown` without forwarding.
    pub slow_down: f64,
    /// Close the connection halfway through the request body (or after the head).
    pub drop_request: f64,
    /// Forward the request (the server acts on it), then close without a response.
    pub lose_response: f64,
    /// Forward the response's head and half of its body, then close.
    pub truncate_response: f64,
    /// Delay the response by 300 ms.
    pub latency: f64,
    /// Only requests whose first line contains this (e.g. `list-type=2`) get faults.
    pub only: Option<&'static str>,
}

struct State {
    faults: Faults,
    rng: u64,
    counts: BTreeMap<&'static str, u64>,
}

pub struct FaultProxy {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (a loopback port).
    pub fn start(upstream: u16, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            faults: Faults::default(),
            rng: seed | 1,
            counts: BTreeMap::new(),
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &st);
                });
            }
        });
        FaultProxy { port, state }
    }

    pub fn set(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// How many times each fault (and `forwarded`) happened so far.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.state.lock().unwrap().counts.clone()
    }

    pub fn count(&self, what: &str) -> u64 {
        self.counts().get(what).copied().unwrap_or(0)
    }
}

/// The next decision for a request whose first line is `line`.
fn decide(st: &Mutex<State>, line: &str) -> &'static str {
    let mut s = st.lock().unwrap();
    // xorshift64*: deterministic per seed, good enough to spread faults.
    s.rng ^= s.rng >> 12;
    s.rng ^= s.rng << 25;
    s.rng ^= s.rng >> 27;
    let x = (s.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
    let f = s.faults;
    let mut what = "forwarded";
    if f.only.is_none_or(|o| line.contains(o)) {
        let mut acc = 0.0;
        for (p, name) in [
            (f.slow_down, "slow_down"),
            (f.drop_request, "drop_request"),
            (f.lose_response, "lose_response"),
            (f.truncate_response, "truncate_response"),
            (f.latency, "latency"),
        ] {
            acc += p;
            if x < acc {
                what = name;
                break;
            }
        }
    }
    *s.counts.entry(what).or_default() += 1;
    what
}

fn serve(mut client: TcpStream, upstream: u16, st: &Mutex<State>) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    // The request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let line = text.lines().next().unwrap_or("").to_string();
    let mut len = 0usize;
    let mut kept = Vec::new();
    for h in text.split("\r\n").skip(1) {
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        assert!(
            !lower.starts_with("transfer-encoding:"),
            "fault proxy: chunked requests are not supported: {line}"
        );
        if !h.is_empty() && !lower.starts_with("connection:") {
            kept.push(h);
        }
    }
    let fate = decide(st, &line);
    let mut body = vec![0u8; len];
    if fate == "drop_request" {
        let _ = client.read_exact(&mut body[..len / 2]);
        return client.shutdown(Shutdown::Both);
    }
    client.read_exact(&mut body)?;
    if fate == "slow_down" {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                   <Message>Please reduce your request rate.</Message></Error>";
        write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut req = format!("{line}\r\n");
    for h in kept {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    match fate {
        "lose_response" => return client.shutdown(Shutdown::Both),
        "latency" => std::thread::sleep(Duration::from_millis(300)),
        "truncate_response" => {
            let body_at = resp
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(resp.len(), |i| i + 4);
            let cut = body_at + (resp.len() - body_at) / 2;
            // A response without a body cannot be cut short: close before it instead.
            let cut = if cut == resp.len() { body_at / 2 } else { cut };
            resp.truncate(cut);
        }
        _ => {}
    }
    client.write_all(&resp)?;
    client.shutdown(Shutdown::Both)
}
