//! Loading a mapped weight file lets its pages go as it goes (S-5 in docs/SAFETY.md): the checksum
//! pass and the validation release each chunk once read, and compiling each dense layer once
//! packed, so the file is never resident as a whole; the model and its plans read the same values
//! as from an in-memory copy.

use bnfold::{Activation, Model, Options};

#[cfg(target_os = "linux")]
#[path = "common/smaps.rs"]
mod smaps;
#[cfg(target_os = "linux")]
use smaps::mapped_rss_kib;

#[cfg(target_os = "linux")]
#[test]
fn loading_and_compiling_a_mapped_file_leave_few_of_its_pages_resident() {
    // 1024 -> 2 x (1024, BN, relu) -> 10: 8.4 MB of f32 weights.
    let bytes = bnfold::synth::mlp(1024, true, &[1024, 1024], Activation::Relu, 10, 5).unwrap();
    assert!(bytes.len() > 8 << 20);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.bnw");
    std::fs::write(&path, &bytes).unwrap();

    let model = Model::load(&path).unwrap();
    // Left resident: the header and table, the small tensors read again after their check (BN
    // variances), and the pages the kernel maps around each fault (88 KiB measured on Linux 6.18,
    // ext4). The bound is half the file, to leave room for kernels that map a whole large
    // page-cache folio per fault; before the release, all of it stayed resident.
    let half_file_kib = bytes.len() as u64 / 2 / 1024;
    let after_load = mapped_rss_kib(&path);
    assert!(
        after_load <= half_file_kib,
        "{after_load} KiB of the file resident after loading"
    );

    let x = bnfold::synth::input(3, 1024, 1.0, 9);
    let in_memory = Model::from_bytes(&bytes).unwrap();
    for opts in [
        Options::folded().with_weights(bnfold::DType::F16),
        Options::unfolded(),
    ] {
        let mapped = model.compile(&opts).unwrap();
        let after_compile = mapped_rss_kib(&path);
        assert!(
            after_compile <= half_file_kib,
            "{after_compile} KiB resident after compiling"
        );
        let a = mapped.session().run(&x, 3).unwrap().to_vec();
        let b = in_memory
            .compile(&opts)
            .unwrap()
            .session()
            .run(&x, 3)
            .unwrap()
            .to_vec();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
    // Every tensor still reads as the file holds it.
    for t in 0..model.tensors().len() {
        let (m, r) = (
            model.tensor_data(t).unwrap(),
            in_memory.tensor_data(t).unwrap(),
        );
        assert_eq!(m.to_f64_vec(), r.to_f64_vec(), "tensor {t}");
    }
}
