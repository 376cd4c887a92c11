// byte_tokenizer.h: the smallest tokenizer HF can read: GPT-2's byte-level BPE with no merges
// (one token per byte, plus <|endoftext|> = 256). For models trained from scratch (the demo).
#pragma once

// Writes dir/tokenizer.json and dir/tokenizer_config.json.
int byte_tokenizer_write(const char *dir);
enum { BYTE_TOKENIZER_VOCAB = 257, BYTE_TOKENIZER_EOS = 256 };
