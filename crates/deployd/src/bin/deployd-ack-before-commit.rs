//! `deployd` built with the `chaos-ack-before-commit` feature: a deliberately broken daemon
//! that acknowledges build submissions before they commit. It exists so the chaos harness can
//! show that it catches such a bug; it must never run anywhere else.

fn main() -> std::process::ExitCode {
    eprintln!("deployd-ack-before-commit: a deliberately BROKEN build (acknowledges writes before they commit), for the chaos harness only");
    deployd::main()
}
