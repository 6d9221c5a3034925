//! `sluice-ipam`: a CNI IPAM plugin, a drop-in for host-local. The protocol
//! lives in `sluice_ipam::plugin`.

fn main() {
    std::process::exit(sluice_ipam::plugin::main());
}
