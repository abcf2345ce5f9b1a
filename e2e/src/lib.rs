//! The end-to-end tests of the operator live in `tests/`; this library is empty until they share
//! setup.
