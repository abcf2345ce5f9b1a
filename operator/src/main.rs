//! Entry point of `orderpipe-operator` (wired up with the controller).

fn main() {}
