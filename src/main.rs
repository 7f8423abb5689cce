use clap::Parser;

fn main() {
    fraudlab::model::kernels::init_threads();
    fraudlab::tune_allocator();
    if let Err(e) = fraudlab::model::kernels::env_cap() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let cli = fraudlab::cli::Cli::parse();
    if let Err(e) = fraudlab::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
}
