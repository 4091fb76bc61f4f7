"""One Keras layer per head, returning raw tensors (decoding and losses live outside).

The output layers of every head compute in float32 (:data:`OUTPUT_DTYPE`)
whatever the global dtype policy: under ``mixed_float16`` / ``mixed_bfloat16``
the towers run in half precision while logits and box codes -- what the
losses, box decoding and NMS read -- stay float32 (Keras' mixed-precision rule
for output layers).
"""

OUTPUT_DTYPE = "float32"
