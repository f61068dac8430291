//! The `arqonbus` server binary. Everything lives in `arqon-server`; this is
//! only the entry point. Run `arqonbus --help`.

fn main() -> std::process::ExitCode {
    arqon_server::cli::main()
}
