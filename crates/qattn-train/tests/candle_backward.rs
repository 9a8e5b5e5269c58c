//! The trainer's backward pass runs on the patched candle-core in `third_party/candle-core`
//! (see third_party/README.md): the first gradient reaching a tensor is stored as it is, not
//! added to a fresh tensor of zeros. These tests pin that behaviour (the stored gradient is the
//! very buffer the op's backward returned) and that gradients of tensors with several
//! consumers are still summed.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Storage, Tensor, Var};

/// `y = 2x`, with a backward that records the address of the first value of the gradient it
/// returns (per op, so tests running in parallel do not see each other's).
#[derive(Default)]
struct Double {
    returned: Arc<Mutex<usize>>,
}

fn data_ptr(t: &Tensor) -> usize {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(CpuStorage::F32(v)) => v[l.start_offset()..].as_ptr() as usize,
        _ => panic!("expected f32 CPU storage"),
    }
}

impl CustomOp1 for Double {
    fn name(&self) -> &'static str {
        "double"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("double: f32 only")
        };
        let (a, b) = l.contiguous_offsets().expect("contiguous input");
        let out: Vec<f32> = v[a..b].iter().map(|x| 2.0 * x).collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = (grad * 2.0)?.contiguous()?;
        *self.returned.lock().expect("not poisoned") = data_ptr(&g);
        Ok(Some(g))
    }
}

#[test]
fn a_single_gradient_is_stored_without_a_copy() -> Result<()> {
    let x = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu)?;
    let op = Double::default();
    let returned = op.returned.clone();
    let loss = (x.as_tensor().apply_op1(op)? * 3.0)?.sum_all()?;
    let grads = loss.backward()?;
    let g = grads.get(x.as_tensor()).expect("x has a gradient");
    assert_eq!(g.to_vec1::<f32>()?, vec![6.0, 6.0, 6.0]);
    // Unpatched candle stores zeros + g, a new buffer; the patch stores g itself.
    let returned = *returned.lock().expect("not poisoned");
    assert_ne!(returned, 0, "the op's backward ran");
    assert_eq!(
        data_ptr(g),
        returned,
        "the gradient was copied: is the [patch.crates-io] candle-core in effect?"
    );
    Ok(())
}

#[test]
fn gradients_of_several_consumers_are_summed() -> Result<()> {
    let x = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
    let t = x.as_tensor();
    // d/dx of Σ (2x·5 + 3x + x²) = 10 + 3 + 2x
    let y = ((t.apply_op1(Double::default())? * 5.0)? + (t * 3.0)?)?;
    let loss = (y + t.sqr()?)?.sum_all()?;
    let grads = loss.backward()?;
    let g = grads.get(t).expect("x has a gradient").to_vec1::<f32>()?;
    assert_eq!(g, vec![15.0, 17.0]);
    Ok(())
}
