//! Relative output error of each benchmarked estimator on Gaussian inputs, as JSON, for
//! `cargo xtask bench kernels`: `{"rows":[{"estimator":…, "lk":…, "rel_error":…, "se":…}]}`.
//!
//! `cargo run --release -p qattn-kernels --example estimator_errors -- [--json PATH] [--quick]`

use candle_core::{Device, Tensor};
use qattn_kernels::AttentionOptions;
use qattn_kernels::study::relative_error;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("QATTN_BENCH_QUICK").is_ok_and(|v| v == "1");
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let lks: &[usize] = if quick {
        &[128, 512, 2048]
    } else {
        &[128, 512, 2048, 8192]
    };
    let ss: &[usize] = if quick { &[8, 32] } else { &[8, 32, 128] };
    let mut specs: Vec<String> = Vec::new();
    for s in ss {
        specs.push(format!("multinomial:{s}"));
        specs.push(format!("stratified:{s}"));
    }
    specs.extend(["topk:8:32", "cv:4:32", "adaptive:8:128"].map(String::from));
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    for &lk in lks {
        // B·H = 16 as in the timing benchmark, D = 64, standard normal q, k, v.
        let q = Tensor::randn(0f32, 1.0, (2, 8, lk, 64), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (2, 8, lk, 64), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (2, 8, lk, 64), &dev)?;
        let seeds = if lk >= 8192 { 0..2 } else { 0..4 };
        for spec in &specs {
            let (e, se) = relative_error(
                &q,
                &k,
                &v,
                &AttentionOptions::default(),
                spec.parse()?,
                seeds.clone(),
            )?;
            eprintln!("{spec:>16} Lk={lk:<5} relative error {e:.4} ± {se:.4}");
            rows.push(format!(
                r#"{{"estimator":"{spec}","lk":{lk},"rel_error":{e},"se":{se}}}"#
            ));
        }
    }
    let body = format!("{{\"rows\":[{}]}}\n", rows.join(","));
    match json {
        Some(p) => std::fs::write(p, body)?,
        None => print!("{body}"),
    }
    Ok(())
}
