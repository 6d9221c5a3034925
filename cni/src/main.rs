fn main() {
    std::process::exit(sluice_cni::main_entry());
}
