//! `deployd`: the daemon. One role per subcommand; see `deployd --help`.

fn main() -> std::process::ExitCode {
    deployd::main()
}
