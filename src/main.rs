//! The `sluice` command line: one file per subcommand under `cli/`.

// The engine allocates many small strings per record; mimalloc serves them
// faster than glibc's allocator and returns memory more readily.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
