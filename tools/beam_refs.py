#!/usr/bin/env python3
"""Beam-search references for the embedded model: transformers' generate(num_beams=N, length_penalty=L,
early_stopping=E, do_sample=False, max_new_tokens=M) on models/tiny, float32, eager attention, CPU.

    python3 tools/beam_refs.py --out test/fixtures/beam/tiny.json

Each case records the prompt's ids (BOS + encode), the settings, the best hypothesis' new tokens (up to and
including the end-of-sequence token that ended it) and its score (sum of log-probabilities divided by
length ** length_penalty). test/beam.test.ts checks the engine against them token for token.
"""
import argparse
import json
import os
import platform

import torch
import transformers
from tokenizers import Tokenizer
from transformers import DeepseekV3ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'models', 'tiny')
PROMPTS = ['The king said', 'Once upon a time', 'In the morning', 'She was']
# (num_beams, length_penalty, early_stopping, max_new_tokens): short and long runs, so that some hypotheses end
# with EOS before the limit and the length penalty and early stopping decide between them.
SETTINGS = [(2, 1.0, False, 16), (4, 1.0, False, 24), (4, 0.5, True, 24), (3, 2.0, False, 32), (4, 1.0, True, 64),
            (5, 1.0, False, 64), (4, -1.0, False, 48)]

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--out', required=True)
args = p.parse_args()

torch.set_num_threads(min(16, os.cpu_count() or 1))
model = DeepseekV3ForCausalLM.from_pretrained(TINY, dtype=torch.float32, attn_implementation='eager',
                                              experts_implementation='eager').eval()
tok = Tokenizer.from_file(os.path.join(TINY, 'tokenizer.json'))
eos = model.config.eos_token_id
cases = []
for prompt in PROMPTS:
    ids = [0] + tok.encode(prompt, add_special_tokens=False).ids
    for n, lp, es, m in SETTINGS:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 num_beams=n, length_penalty=lp, early_stopping=es, do_sample=False,
                                 max_new_tokens=m, pad_token_id=eos, return_dict_in_generate=True, output_scores=True)
        new = out.sequences[0, len(ids):].tolist()
        if eos in new:
            new = new[:new.index(eos) + 1]
        cases.append({'prompt': prompt, 'input_ids': ids, 'num_beams': n, 'length_penalty': lp, 'early_stopping': es,
                      'max_new_tokens': m, 'output_ids': new, 'score': float(out.sequences_scores[0]),
                      'ends_with_eos': bool(new and new[-1] == eos)})
        print(json.dumps(cases[-1]), flush=True)
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
with open(args.out, 'w') as f:
    json.dump({'reference': 'transformers %s (torch %s), float32, eager attention, CPU, models/tiny' % (
        transformers.__version__, torch.__version__), 'python': platform.python_version(), 'cases': cases}, f, indent=1)
    f.write('\n')
