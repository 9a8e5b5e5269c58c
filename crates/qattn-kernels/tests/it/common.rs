use candle_core::{DType, Device, Tensor};
use qattn_kernels::reference::Dims;
use qattn_kernels::{
    AttentionOptions, Diagnostics, EstimatorSpec, attention, attention_with_diagnostics,
};

/// A deterministic pseudo-random generator for test inputs (SplitMix64 → Box-Muller).
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn normals(&mut self, n: usize, sd: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * sd) as f32).collect()
    }
}

/// Inputs of one problem as flat f32 vectors plus their dims.
pub struct Inputs {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub dims: Dims,
}

impl Inputs {
    pub fn gaussian(seed: u64, dims: Dims, logit_sd: f64) -> Self {
        let mut g = Gen::new(seed);
        let Dims {
            b,
            h,
            lq,
            lk,
            d,
            dv,
        } = dims;
        // Scale q so logits have roughly `logit_sd` spread after the default 1/sqrt(d) scale.
        let q = g.normals(b * h * lq * d, logit_sd);
        let k = g.normals(b * h * lk * d, 1.0);
        let v = g.normals(b * h * lk * dv, 1.0);
        Inputs { q, k, v, dims }
    }

    pub fn tensors(&self) -> (Tensor, Tensor, Tensor) {
        let Dims {
            b,
            h,
            lq,
            lk,
            d,
            dv,
        } = self.dims;
        let dev = Device::Cpu;
        (
            Tensor::from_vec(self.q.clone(), (b, h, lq, d), &dev).unwrap(),
            Tensor::from_vec(self.k.clone(), (b, h, lk, d), &dev).unwrap(),
            Tensor::from_vec(self.v.clone(), (b, h, lk, dv), &dev).unwrap(),
        )
    }

    pub fn f64s(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let c = |x: &Vec<f32>| x.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        (c(&self.q), c(&self.k), c(&self.v))
    }

    pub fn scale(&self) -> f64 {
        1.0 / (self.dims.d as f64).sqrt()
    }

    pub fn reference(&self, causal: bool, mask: Option<&[u8]>) -> Vec<f64> {
        let (q, k, v) = self.f64s();
        qattn_kernels::reference::attention(&q, &k, &v, self.dims, self.scale(), causal, mask)
    }

    pub fn mask_tensor(&self, mask: &[u8]) -> Tensor {
        let m: Vec<u32> = mask.iter().map(|&x| u32::from(x)).collect();
        Tensor::from_vec(m, (self.dims.b, self.dims.lk), &Device::Cpu).unwrap()
    }

    pub fn run(&self, spec: &str, seed: u64) -> Vec<f32> {
        let (q, k, v) = self.tensors();
        let opts = AttentionOptions {
            estimator: spec.parse::<EstimatorSpec>().unwrap(),
            seed,
            ..Default::default()
        };
        flat(&attention(&q, &k, &v, &opts).unwrap())
    }

    pub fn run_opts(&self, opts: &AttentionOptions) -> Vec<f32> {
        let (q, k, v) = self.tensors();
        flat(&attention(&q, &k, &v, opts).unwrap())
    }

    pub fn run_diag(&self, opts: &AttentionOptions) -> (Vec<f32>, Diagnostics) {
        let (q, k, v) = self.tensors();
        let (o, d) = attention_with_diagnostics(&q, &k, &v, opts).unwrap();
        (flat(&o), d)
    }
}

pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// max |a−b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(1e-30);
    num / den
}

/// Mean and standard error per coordinate over many runs.
pub struct Moments {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub n: usize,
}

impl Moments {
    pub fn of(runs: impl Iterator<Item = Vec<f32>>) -> Self {
        let mut sum: Vec<f64> = Vec::new();
        let mut sq: Vec<f64> = Vec::new();
        let mut n = 0;
        for r in runs {
            if sum.is_empty() {
                sum = vec![0.0; r.len()];
                sq = vec![0.0; r.len()];
            }
            for (i, &x) in r.iter().enumerate() {
                sum[i] += f64::from(x);
                sq[i] += f64::from(x) * f64::from(x);
            }
            n += 1;
        }
        let nn = n as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / nn).collect();
        let var = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s - nn * m * m) / (nn - 1.0)).max(0.0))
            .collect();
        Moments { mean, var, n }
    }

    pub fn se(&self, i: usize) -> f64 {
        (self.var[i] / self.n as f64).sqrt()
    }

    /// Total variance (sum over coordinates) of one run.
    pub fn total_var(&self) -> f64 {
        self.var.iter().sum()
    }

    /// Mean squared error against a reference.
    pub fn mse(&self, reference: &[f64]) -> f64 {
        let bias2: f64 = self
            .mean
            .iter()
            .zip(reference)
            .map(|(m, r)| (m - r).powi(2))
            .sum();
        bias2 + self.total_var()
    }
}
