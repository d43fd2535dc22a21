//! Engine: kv cache, sampler, decode loop (no tokio).
