use clap::Parser;

fn main() {
    let cli = cairn::cli::Cli::parse();
    let code = match cairn::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: error: {e}");
            if matches!(e, cairn::Error::Usage(_)) {
                2
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}
