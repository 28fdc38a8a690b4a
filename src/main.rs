use std::process::ExitCode;

fn main() -> ExitCode {
    clusterscope::cli::main()
}
