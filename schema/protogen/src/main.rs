fn main() {
    let dir = std::env::args().nth(1).expect("schema dir");
    let out = std::path::Path::new(&dir).join("src/generated");
    std::fs::create_dir_all(&out).unwrap();
    let protos = ["proto/prometheus/types.proto", "proto/prometheus/remote.proto", "proto/io/prometheus/write/v2/types.proto"];
    let protos: Vec<_> = protos.iter().map(|p| std::path::Path::new(&dir).join(p)).collect();
    prost_build::Config::new().out_dir(&out).compile_protos(&protos, &[std::path::Path::new(&dir).join("proto")]).unwrap();
}
