//! LVM's configuration language, in which VG metadata is written: a recursive-descent
//! parser bounded in nesting depth and item count (the text itself is capped in size
//! before it gets here).
//!
//! ```text
//! item    := key '=' value | key '{' item* '}'
//! value   := string | number | '[' (value (',' value)* ','?)? ']'
//! string  := '"' … '"' or '\'' … '\'' with backslash escapes
//! comment := '#' to the end of the line
//! ```

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Array(Vec<Value>),
    Section(Section),
}

/// The items of a section in file order (keys may repeat; lookups take the first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    pub items: Vec<(String, Value)>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.items.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// A non-negative integer.
    pub fn uint(&self, key: &str) -> Option<u64> {
        self.int(key).and_then(|n| u64::try_from(n).ok())
    }

    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }

    pub fn array(&self, key: &str) -> Option<&[Value]> {
        match self.get(key)? {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The subsections, in file order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.items.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }

    /// The strings of an array value (other elements skipped).
    pub fn strings(&self, key: &str) -> Vec<&str> {
        self.array(key)
            .unwrap_or(&[])
            .iter()
            .filter_map(|v| match v {
                Value::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Sections and arrays nested deeper than this are refused (VG metadata uses 4 levels).
const MAX_DEPTH: usize = 16;
/// Items and array elements in all, at most.
const MAX_ITEMS: usize = 2_000_000;

pub fn parse(text: &str) -> Result<Section> {
    let mut p = Parser {
        b: text.as_bytes(),
        pos: 0,
        items: 0,
    };
    p.body(0)
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    items: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> Error {
        let end = self.pos.min(self.b.len());
        let line = 1 + self.b[..end].iter().filter(|&&c| c == b'\n').count();
        Error::Guest(format!("LVM2 metadata text, line {line}: {msg}"))
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'#' {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn count(&mut self) -> Result<()> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(self.err(&format!("more than {MAX_ITEMS} items")));
        }
        Ok(())
    }

    /// The items up to the end of the text (depth 0) or to the closing brace.
    fn body(&mut self, depth: usize) -> Result<Section> {
        let mut s = Section::default();
        loop {
            self.skip_blank();
            match self.peek() {
                None if depth == 0 => return Ok(s),
                None => return Err(self.err("section not closed before the end")),
                Some(b'}') if depth > 0 => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(_) => {}
            }
            let key = self.ident()?;
            self.skip_blank();
            let v = match self.peek() {
                Some(b'=') => {
                    self.pos += 1;
                    self.skip_blank();
                    self.value(depth)?
                }
                Some(b'{') => {
                    self.pos += 1;
                    if depth + 1 > MAX_DEPTH {
                        return Err(self.err(&format!("sections nested deeper than {MAX_DEPTH}")));
                    }
                    Value::Section(self.body(depth + 1)?)
                }
                _ => return Err(self.err(&format!("expected '=' or '{{' after {key:?}"))),
            };
            self.count()?;
            s.items.push((key, v));
        }
    }

    fn ident(&mut self) -> Result<String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"_.-+/:@".contains(&c))
        {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.err("expected a key"));
        }
        Ok(String::from_utf8_lossy(&self.b[start..self.pos]).into_owned())
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        match self.peek() {
            Some(q @ (b'"' | b'\'')) => self.string(q),
            Some(b'[') => {
                self.pos += 1;
                if depth + 1 > MAX_DEPTH {
                    return Err(self.err(&format!("arrays nested deeper than {MAX_DEPTH}")));
                }
                let mut a = Vec::new();
                loop {
                    self.skip_blank();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        return Ok(Value::Array(a));
                    }
                    a.push(self.value(depth + 1)?);
                    self.count()?;
                    self.skip_blank();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {}
                        _ => return Err(self.err("expected ',' or ']' in an array")),
                    }
                }
            }
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_digit() || b"+-.eE".contains(&c))
                {
                    self.pos += 1;
                }
                let t = std::str::from_utf8(&self.b[start..self.pos]).unwrap_or("");
                if let Ok(n) = t.parse::<i64>() {
                    Ok(Value::Int(n))
                } else if let Ok(f) = t.parse::<f64>() {
                    Ok(Value::Float(f))
                } else {
                    Err(self.err(&format!("{t:?} is not a number")))
                }
            }
            _ => Err(self.err("expected a value")),
        }
    }

    fn string(&mut self, quote: u8) -> Result<Value> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("string not closed before the end")),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(Value::Str(String::from_utf8_lossy(&out).into_owned()));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(c) = self.peek() else {
                        return Err(self.err("string not closed before the end"));
                    };
                    out.push(c);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_language() {
        let t = "# comment\nvg {\n id = \"a\\\"b\\\\c\" # trailing\n n = -12\n f = 1.5\n\
                 s = ['x', \"y\", 3,]\n e = []\n sub { deep { k = 1 } }\n}\nversion = 1\n";
        let c = parse(t).unwrap();
        let vg = c.section("vg").unwrap();
        assert_eq!(vg.str("id"), Some("a\"b\\c"));
        assert_eq!(vg.int("n"), Some(-12));
        assert_eq!(vg.uint("n"), None);
        assert_eq!(vg.get("f"), Some(&Value::Float(1.5)));
        assert_eq!(vg.strings("s"), ["x", "y"]);
        assert_eq!(vg.array("s").unwrap()[2], Value::Int(3));
        assert_eq!(vg.array("e"), Some(&[][..]));
        assert_eq!(
            vg.section("sub").unwrap().section("deep").unwrap().int("k"),
            Some(1)
        );
        assert_eq!(c.int("version"), Some(1));
    }

    #[test]
    fn refuses_bad_text() {
        for t in [
            "a {",
            "a = ",
            "a = \"x",
            "a = [1 2]",
            "a = 12abc",
            "}",
            "= 1",
            "a b",
            &"a { ".repeat(100),
            &format!("a = {}1{}", "[".repeat(100), "]".repeat(100)),
            "a = [\"x\\",
        ] {
            assert!(parse(t).is_err(), "{t:?}");
        }
    }
}
