fn main() -> std::process::ExitCode {
    gatewayd::cli::main()
}
