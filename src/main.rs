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
        use std::io::Write;
        // written with errors ignored: after SIGHUP the terminal is gone
        if let Some(s) = e.downcast_ref::<fraudlab::tui::StoppedBySignal>() {
            let _ = writeln!(std::io::stderr(), "{s}");
            std::process::exit(128 + s.signal);
        }
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
        std::process::exit(2);
    }
}
