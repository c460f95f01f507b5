//! Compiles `fleet.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=fleet.proto");
    let descriptors = protox::compile(["fleet.proto"], ["."])?;
    tonic_prost_build::configure()
        // Step data as reference-counted `Bytes`: a sampled sequence shares
        // its buffers with the stored one instead of copying them.
        .bytes(".fleet.v1.Tensor.data")
        // Weights chunks as slices of the published blob: every watcher's
        // stream shares one copy.
        .bytes(".fleet.v1.WeightsChunk.data")
        // Messages are encoded into a buffer sized for them (src/codec.rs).
        .codec_path("crate::codec::PresizedCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
