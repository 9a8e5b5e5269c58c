//! candle's CPU matmul as patched in `third_party/candle-core`: the destination is allocated
//! without zero-filling and gemm writes every element of it. Each case first frees a buffer of
//! the result's size filled with NaN, so an element gemm failed to write would most likely
//! read back as that NaN; the results are compared with an f64 reference (relative 1e-5).

use candle_core::{DType, Device, IndexOp, Tensor};

/// Frees `n` NaNs just before the matmul, returning where they lived, so that the allocator
/// hands the same memory to the matmul's destination.
fn poison(n: usize) -> usize {
    let v = vec![f32::NAN; n];
    let at = v.as_ptr() as usize;
    drop(std::hint::black_box(v));
    at
}

fn data_ptr(t: &Tensor) -> usize {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            cpu.as_slice::<f32>().expect("f32 storage")[layout.start_offset()..].as_ptr() as usize
        }
        _ => unreachable!("CPU tensors only"),
    }
}

/// `a @ b` in f64 for `[.., m, k] × [.., k, n]` tensors (batch dims broadcast like candle's).
fn reference(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let (ad, bd) = (a.dims().to_vec(), b.dims().to_vec());
    let (m, k, n) = (ad[ad.len() - 2], ad[ad.len() - 1], bd[bd.len() - 1]);
    let batches = ad[..ad.len() - 2].iter().product::<usize>().max(1);
    let a = a.reshape((batches, m, k)).unwrap();
    let b = if bd.len() == 2 {
        b.unsqueeze(0).unwrap().repeat((batches, 1, 1)).unwrap()
    } else {
        b.reshape((batches, k, n)).unwrap()
    };
    let mut out = Vec::with_capacity(batches * m * n);
    for s in 0..batches {
        let a = a.i(s).unwrap().to_vec2::<f64>().unwrap();
        let b = b.i(s).unwrap().to_vec2::<f64>().unwrap();
        for i in 0..m {
            for j in 0..n {
                out.push((0..k).map(|p| a[i][p] * b[p][j]).sum());
            }
        }
    }
    out
}

fn check(name: &str, a: &Tensor, b: &Tensor, reused: &mut usize) {
    let want = reference(a, b);
    let freed = poison(want.len());
    let got = if b.rank() == 2 && a.rank() == 3 {
        a.broadcast_matmul(b).unwrap()
    } else {
        a.matmul(b).unwrap()
    };
    if data_ptr(&got) == freed {
        *reused += 1;
    }
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "{name}: element count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{name}: element {i} is {g}, want {w}"
        );
    }
}

#[test]
fn matmul_writes_every_element_of_an_uninitialised_destination() {
    let dev = Device::Cpu;
    let r = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
    let mut reused = 0;
    // Plain, odd sizes (edge tiles of the micro-kernel), one row, one column.
    check("37x19x53", &r(&[37, 19]), &r(&[19, 53]), &mut reused);
    check("1x64x96", &r(&[1, 64]), &r(&[64, 96]), &mut reused);
    check("96x64x1", &r(&[96, 64]), &r(&[64, 1]), &mut reused);
    // Batched, and a batch-invariant rhs (folded into one gemm of b·m rows).
    check(
        "3x(20x16x24)",
        &r(&[3, 20, 16]),
        &r(&[3, 16, 24]),
        &mut reused,
    );
    check(
        "4x(33x17)x(17x29) broadcast",
        &r(&[4, 33, 17]),
        &r(&[17, 29]),
        &mut reused,
    );
    // Transposed operands (the layouts of the backward pass).
    let (a, b) = (r(&[48, 40]), r(&[56, 48]));
    check("a^T b^T", &a.t().unwrap(), &b.t().unwrap(), &mut reused);
    // k = 0: the result is all zeros, written by gemm rather than by a fill.
    let a = Tensor::zeros((24, 0), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((0, 40), DType::F32, &dev).unwrap();
    check("k = 0", &a, &b, &mut reused);
    // The test can only catch an unwritten element when the destination really reused the
    // poisoned memory; glibc hands a just-freed chunk of the same size back at once.
    assert!(
        reused >= 4,
        "the matmul destination reused the freed NaN buffer in only {reused} of 7 cases"
    );
}
