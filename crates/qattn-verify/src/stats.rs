//! Statistical tests (filled in below).
