use std::process::ExitCode;

fn main() -> ExitCode {
    residency_relay::cli::main()
}
