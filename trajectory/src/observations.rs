//! Observations in the element type they travel in: f32 vectors or u8
//! frames, owned ([`Observations`]) or borrowed ([`ObservationsRef`],
//! [`ObservationsMut`]). Environments write into these, the actor's
//! sequence writer copies them, the learner stacks them into a batch: the
//! values are never converted on the way, only at the network's input.

use crate::{Dtype, ObservationSpec};

/// A buffer of observations, f32 or u8.
#[derive(Debug, Clone, PartialEq)]
pub enum Observations {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

/// A borrowed run of observations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObservationsRef<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

/// A borrowed run of observations to write into.
#[derive(Debug, PartialEq)]
pub enum ObservationsMut<'a> {
    F32(&'a mut [f32]),
    U8(&'a mut [u8]),
}

impl Observations {
    /// `len` zero values of the type `spec`'s observations have.
    pub fn zeros(spec: &ObservationSpec, len: usize) -> Self {
        match spec.dtype() {
            Dtype::U8 => Self::U8(vec![0; len]),
            _ => Self::F32(vec![0.0; len]),
        }
    }

    /// An empty buffer with room for `len` values of `spec`'s type.
    pub fn with_capacity(spec: &ObservationSpec, len: usize) -> Self {
        match spec.dtype() {
            Dtype::U8 => Self::U8(Vec::with_capacity(len)),
            _ => Self::F32(Vec::with_capacity(len)),
        }
    }

    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> Dtype {
        self.as_ref().dtype()
    }

    pub fn as_ref(&self) -> ObservationsRef<'_> {
        match self {
            Self::F32(v) => ObservationsRef::F32(v),
            Self::U8(v) => ObservationsRef::U8(v),
        }
    }

    pub fn as_mut(&mut self) -> ObservationsMut<'_> {
        match self {
            Self::F32(v) => ObservationsMut::F32(v),
            Self::U8(v) => ObservationsMut::U8(v),
        }
    }

    /// Values `range`, borrowed.
    pub fn slice(&self, range: std::ops::Range<usize>) -> ObservationsRef<'_> {
        self.as_ref().slice(range)
    }

    /// Values `range`, borrowed to write into.
    pub fn slice_mut(&mut self, range: std::ops::Range<usize>) -> ObservationsMut<'_> {
        match self {
            Self::F32(v) => ObservationsMut::F32(&mut v[range]),
            Self::U8(v) => ObservationsMut::U8(&mut v[range]),
        }
    }

    /// Appends `values`.
    ///
    /// # Panics
    /// If `values` has another element type.
    pub fn extend_from(&mut self, values: ObservationsRef<'_>) {
        match (self, values) {
            (Self::F32(dst), ObservationsRef::F32(src)) => dst.extend_from_slice(src),
            (Self::U8(dst), ObservationsRef::U8(src)) => dst.extend_from_slice(src),
            (dst, src) => panic!("cannot append {} observations to {} ones", src.dtype(), dst.dtype()),
        }
    }

    /// Drops the first `len` values.
    pub fn drain_front(&mut self, len: usize) {
        match self {
            Self::F32(v) => drop(v.drain(..len)),
            Self::U8(v) => drop(v.drain(..len)),
        }
    }
}

impl<'a> ObservationsRef<'a> {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            Self::F32(_) => Dtype::F32,
            Self::U8(_) => Dtype::U8,
        }
    }

    /// Values `range`.
    pub fn slice(self, range: std::ops::Range<usize>) -> ObservationsRef<'a> {
        match self {
            Self::F32(v) => Self::F32(&v[range]),
            Self::U8(v) => Self::U8(&v[range]),
        }
    }

    /// The f32 values.
    ///
    /// # Panics
    /// On u8 observations: a caller that needs f32 has been handed frames.
    pub fn f32(self) -> &'a [f32] {
        match self {
            Self::F32(v) => v,
            Self::U8(_) => panic!("expected f32 observations, got u8 frames"),
        }
    }

    /// The u8 values.
    ///
    /// # Panics
    /// On f32 observations.
    pub fn u8(self) -> &'a [u8] {
        match self {
            Self::U8(v) => v,
            Self::F32(_) => panic!("expected u8 frames, got f32 observations"),
        }
    }
}

impl<'a> ObservationsMut<'a> {
    /// The same values, borrowed to read.
    pub fn as_ref(&self) -> ObservationsRef<'_> {
        match self {
            Self::F32(v) => ObservationsRef::F32(v),
            Self::U8(v) => ObservationsRef::U8(v),
        }
    }

    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> Dtype {
        self.as_ref().dtype()
    }

    /// The f32 slots.
    ///
    /// # Panics
    /// On a u8 buffer: an environment of vectors has been handed a frame buffer.
    pub fn f32(self) -> &'a mut [f32] {
        match self {
            Self::F32(v) => v,
            Self::U8(_) => panic!("expected an f32 observation buffer, got a u8 one"),
        }
    }

    /// The u8 slots.
    ///
    /// # Panics
    /// On an f32 buffer.
    pub fn u8(self) -> &'a mut [u8] {
        match self {
            Self::U8(v) => v,
            Self::F32(_) => panic!("expected a u8 frame buffer, got an f32 one"),
        }
    }

    /// Copies `src` (of the same type and length) in.
    ///
    /// # Panics
    /// If the types or lengths differ.
    pub fn copy_from(self, src: ObservationsRef<'_>) {
        match (self, src) {
            (Self::F32(dst), ObservationsRef::F32(src)) => dst.copy_from_slice(src),
            (Self::U8(dst), ObservationsRef::U8(src)) => dst.copy_from_slice(src),
            (dst, src) => panic!("cannot copy {} observations into {} ones", src.dtype(), dst.dtype()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FrameShape;

    #[test]
    fn frames_stay_u8_and_vectors_f32() {
        let frames = ObservationSpec::Frames(FrameShape {
            channels: 1,
            height: 2,
            width: 2,
        });
        let mut buffer = Observations::with_capacity(&frames, 8);
        buffer.extend_from(ObservationsRef::U8(&[0, 255, 7, 9]));
        buffer.extend_from(ObservationsRef::U8(&[1, 2, 3, 4]));
        buffer.drain_front(4);
        assert_eq!(buffer, Observations::U8(vec![1, 2, 3, 4]));
        assert_eq!(buffer.slice(1..3).u8(), [2, 3]);
        let vectors = Observations::zeros(&ObservationSpec::Vector { size: 3 }, 3);
        assert_eq!(vectors.dtype(), Dtype::F32);
    }

    #[test]
    #[should_panic(expected = "cannot append f32 observations to u8 ones")]
    fn mixing_element_types_is_a_bug() {
        Observations::U8(Vec::new()).extend_from(ObservationsRef::F32(&[1.0]));
    }
}
