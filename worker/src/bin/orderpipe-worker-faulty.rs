//! `orderpipe-worker-faulty`: the worker binary (`src/main.rs`, compiled again under this name)
//! as a deliberately bad release for the canary tests. `stage::fault` says what it does, and why
//! nothing but this binary's name switches it on.

#[path = "../main.rs"]
mod worker;

fn main() -> std::process::ExitCode {
    worker::main()
}
