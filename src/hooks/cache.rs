//! The activation cache: captured arrays by hook name, as plain row-major f32 buffers that the
//! Python layer hands to numpy without copying.

/// A dense row-major f32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedArray {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl CapturedArray {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        CapturedArray { shape, data }
    }
}

/// Captured activations in forward order.
#[derive(Debug, Default)]
pub struct ActivationCache {
    entries: Vec<(String, CapturedArray)>,
}

impl ActivationCache {
    pub fn insert(&mut self, name: String, array: CapturedArray) {
        self.entries.push((name, array));
    }
    pub fn get(&self, name: &str) -> Option<&CapturedArray> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn into_entries(self) -> Vec<(String, CapturedArray)> {
        self.entries
    }
}
