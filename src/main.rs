use clap::Parser;

fn main() {
    let cli = cairn::cli::Cli::parse();
    let code = match cairn::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
