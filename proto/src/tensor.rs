//! Typed slices to and from [`pb::Tensor`] (dtype, shape, little-endian bytes),
//! with the byte count checked against the shape.

use crate::pb::{Dtype, Tensor};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("tensor has dtype {found:?}, expected {expected:?}")]
    Dtype { expected: Dtype, found: Dtype },
    #[error("tensor of shape {shape:?} and dtype {dtype:?} needs {expected} bytes, got {found}")]
    ByteCount {
        shape: Vec<u64>,
        dtype: Dtype,
        expected: usize,
        found: usize,
    },
    #[error("tensor shape {0:?} overflows")]
    ShapeOverflow(Vec<u64>),
    #[error("tensor has an unknown dtype ({0})")]
    UnknownDType(i32),
}

/// Bytes per element, or `None` for an unspecified dtype.
pub fn dtype_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::Unspecified => None,
        Dtype::F32 => Some(4),
        Dtype::U8 => Some(1),
        Dtype::I64 => Some(8),
    }
}

impl Tensor {
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Self::new(Dtype::F32, shape, data)
    }

    pub fn from_i64(shape: &[usize], values: &[i64]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let mut data = Vec::with_capacity(values.len() * 8);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Self::new(Dtype::I64, shape, data)
    }

    /// Makes the tensor own exactly its bytes. A decoded tensor's data may be
    /// a view into a larger receive buffer, which keeping the tensor would
    /// keep alive; long-lived tensors (stored items) are compacted first.
    pub fn compact(&mut self) {
        self.data = prost::bytes::Bytes::copy_from_slice(&self.data);
    }

    pub fn from_u8(shape: &[usize], values: Vec<u8>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        Self::new(Dtype::U8, shape, values)
    }

    fn new(dtype: Dtype, shape: &[usize], data: Vec<u8>) -> Self {
        Tensor {
            dtype: dtype as i32,
            shape: shape.iter().map(|&d| d as u64).collect(),
            data: data.into(),
        }
    }

    pub fn dims(&self) -> Vec<usize> {
        self.shape.iter().map(|&d| d as usize).collect()
    }

    /// Number of elements the shape promises, if it does not overflow.
    pub fn num_elements(&self) -> Result<usize, TensorError> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| TensorError::ShapeOverflow(self.shape.clone()))
    }

    /// The dtype, rejecting values this build does not know.
    pub fn checked_dtype(&self) -> Result<Dtype, TensorError> {
        Dtype::try_from(self.dtype).map_err(|_| TensorError::UnknownDType(self.dtype))
    }

    /// Checks that the dtype is `expected` and the byte count matches the shape.
    pub fn check(&self, expected: Dtype) -> Result<(), TensorError> {
        let dtype = self.checked_dtype()?;
        if dtype != expected {
            return Err(TensorError::Dtype { expected, found: dtype });
        }
        self.check_bytes()
    }

    /// Checks that the byte count matches the shape and dtype.
    pub fn check_bytes(&self) -> Result<(), TensorError> {
        let dtype = self.checked_dtype()?;
        let size = dtype_size(dtype).ok_or(TensorError::UnknownDType(self.dtype))?;
        let expected = self
            .num_elements()?
            .checked_mul(size)
            .ok_or_else(|| TensorError::ShapeOverflow(self.shape.clone()))?;
        if expected != self.data.len() {
            return Err(TensorError::ByteCount {
                shape: self.shape.clone(),
                dtype,
                expected,
                found: self.data.len(),
            });
        }
        Ok(())
    }

    pub fn to_f32(&self) -> Result<Vec<f32>, TensorError> {
        self.check(Dtype::F32)?;
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The bytes of a u8 tensor, borrowed (no copy).
    pub fn as_u8(&self) -> Result<&[u8], TensorError> {
        self.check(Dtype::U8)?;
        Ok(&self.data)
    }

    pub fn to_i64(&self) -> Result<Vec<i64>, TensorError> {
        self.check(Dtype::I64)?;
        let (words, _) = self.data.as_chunks::<8>();
        Ok(words.iter().map(|b| i64::from_le_bytes(*b)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_is_little_endian() {
        let t = Tensor::from_f32(&[2], &[1.0, -2.5]);
        assert_eq!(&t.data[..4], &1.0f32.to_le_bytes());
        assert_eq!(t.to_f32().unwrap(), vec![1.0, -2.5]);
    }

    #[test]
    fn i64_round_trip() {
        let t = Tensor::from_i64(&[3, 1], &[0, -1, i64::MAX]);
        assert_eq!(t.to_i64().unwrap(), vec![0, -1, i64::MAX]);
    }

    #[test]
    fn u8_round_trip_and_dtype_check() {
        let t = Tensor::from_u8(&[2, 3], vec![0, 1, 127, 128, 254, 255]);
        assert_eq!(t.as_u8().unwrap(), &[0, 1, 127, 128, 254, 255]);
        assert!(matches!(t.to_f32(), Err(TensorError::Dtype { .. })));
        assert!(matches!(
            Tensor::from_f32(&[1], &[1.0]).as_u8(),
            Err(TensorError::Dtype {
                expected: Dtype::U8,
                found: Dtype::F32
            })
        ));
    }

    #[test]
    fn wrong_byte_count_is_rejected() {
        let mut t = Tensor::from_f32(&[3], &[1.0, 2.0, 3.0]);
        t.data.truncate(t.data.len() - 1);
        assert!(matches!(
            t.to_f32(),
            Err(TensorError::ByteCount {
                expected: 12,
                found: 11,
                ..
            })
        ));
    }

    #[test]
    fn wrong_dtype_and_unknown_dtype_are_rejected() {
        let t = Tensor::from_f32(&[1], &[1.0]);
        assert!(matches!(t.to_i64(), Err(TensorError::Dtype { .. })));
        let mut t = Tensor::from_f32(&[1], &[1.0]);
        t.dtype = 99;
        assert_eq!(t.check_bytes(), Err(TensorError::UnknownDType(99)));
    }

    #[test]
    fn overflowing_shape_is_rejected() {
        let t = Tensor {
            dtype: Dtype::F32 as i32,
            shape: vec![u64::MAX, 2],
            data: Default::default(),
        };
        assert!(matches!(t.check_bytes(), Err(TensorError::ShapeOverflow(_))));
    }
}
