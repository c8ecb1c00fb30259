//! Shared helpers for the benches: synthetic policies of a given size.
