//! The backend-independent storage test suite. Every backend runs
//! [`run_all`] on a fresh, empty store.
