fn main() {
    eprintln!("iogate-metrics-sidecar: under construction");
    std::process::exit(2);
}
