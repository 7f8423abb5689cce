//! Where weights come from: the source trait, the shape check, safetensors files.

#[allow(unused_imports)]
use super::*;

/// Where a model's weights come from; shapes are checked against the config by the source.
pub trait WeightSource {
    /// A dense tensor in the model's dtype.
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A linear layer's weight: dense, or kept quantized when the source allows it.
    fn linear(&self, name: &str, shape: &[usize]) -> Result<LinearWeight>;
    fn has(&self, name: &str) -> bool;
    /// Where the weights live, for messages.
    fn describe(&self) -> String;
}

/// Shape check shared by the weight sources.
pub fn check_shape(name: &str, got: &[usize], want: &[usize], file: &str) -> Result<()> {
    if got != want {
        bail!("{file}: tensor `{name}` has shape {got:?}, but config.json implies {want:?}");
    }
    Ok(())
}

/// A weight source over Hugging Face safetensors (single or sharded).
pub struct SafetensorsSource {
    pub files: crate::model::safetensors_io::WeightFiles,
    pub dtype: DType,
    pub device: Device,
}

impl WeightSource for SafetensorsSource {
    fn dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (path, e) = self
            .files
            .entry(name)
            .with_context(|| format!("the weights have no tensor `{name}`"))?;
        check_shape(name, &e.shape, shape, &path.display().to_string())?;
        self.files.load(name, self.dtype, &self.device)
    }
    fn linear(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        Ok(LinearWeight::Dense(self.dense(name, shape)?))
    }
    fn has(&self, name: &str) -> bool {
        self.files.contains(name)
    }
    fn describe(&self) -> String {
        "safetensors".into()
    }
}
