//! The Sluice node daemon. Not built yet: this crate holds no binary until
//! the daemon issue lands, so nothing here pretends to serve the API. The
//! plugin already writes endpoint records and tries the daemon's socket with a
//! bounded wait, so pods added now are picked up when the daemon arrives.
