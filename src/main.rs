use clap::Parser;

fn main() {
    fraudlab::tune_allocator();
    let cli = fraudlab::cli::Cli::parse();
    if let Err(e) = fraudlab::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
