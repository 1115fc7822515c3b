//! The LLM-powered user simulator (Zhang et al., AAAI 2025): an LLM reads
//! each item's reviews and writes its pros, cons, keywords and category;
//! three voters (keyword matching, embedding similarity, a SASRec model)
//! then decide whether a user engages with an item.
//!
//! This module holds the item analysis so far: the prompt and the strict
//! parser of the LLM's answer, the keyword analyser used without an
//! endpoint ([`analysis`]), the client of an OpenAI-compatible
//! chat-completions endpoint ([`client`]), the pipeline with retries,
//! concurrency and a disk cache ([`pipeline`]), sentence embeddings from a
//! local BERT-family model ([`embed`]), and the voters' decision rules with
//! their 2-of-3 ensemble ([`voters`]). `kiln serve` serves a
//! model of the GHPO crate over the same API, and `kiln llmsim analyse`
//! runs the pipeline. The statistical voter, SASRec, trains as the job
//! `llmsim.sasrec` ([`sasrec`]) on interactions such as those of the small
//! review world [`synth`] writes (`kiln llmsim synth`); [`evaluate`]
//! scores the voters and their ensemble against held-out interactions
//! (`kiln llmsim evaluate`). The environment and its agents are not
//! written yet.

pub mod analysis;
pub mod client;
pub mod embed;
pub mod evaluate;
pub mod pipeline;
pub mod sasrec;
pub mod synth;
pub mod voters;
