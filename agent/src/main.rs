//! `rackwarden`: parse the command line, run the chosen command, exit with its code.

fn main() -> std::process::ExitCode {
    rackwarden::cli::main()
}
