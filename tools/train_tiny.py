#!/usr/bin/env python3
"""Train the tiny DeepSeek-V3-architecture model that DeepWasm embeds as its default (models/tiny/).

Run on a CUDA machine with PyTorch, transformers (DeepseekV3ForCausalLM), tokenizers and safetensors:

    tools/fetch-corpus.sh                                   # once, where apt works: writes .corpus/
    PYTHONUNBUFFERED=1 python3 tools/train_tiny.py --out /tmp/tiny --time-budget 300

It (1) trains a byte-level BPE tokenizer on the corpus with DeepSeek-V3's exact pre-tokenizer, decoder and
special tokens (copied from test/fixtures/tokenizers/v3-format/tokenizer.json) and DeepSeek-V3's
tokenizer_config.json (chat template); (2) trains a DeepseekV3ForCausalLM with q_lora, YaRN, sigmoid
routing with a correction bias and expert groups (noaux_tc), one shared expert and a dense first layer, as a
plain next-token model with bf16 autocast, AdamW and a cosine schedule, for a fixed time or number of steps;
the routing bias is trained with DeepSeek-V3's auxiliary-loss-free balancing; (3) saves config.json,
model.safetensors (bf16 weights, f32 routing bias, per-expert tensor names as DeepSeek's releases use),
tokenizer.json, tokenizer_config.json, generation_config.json and README.md; (4) reloads the saved files into
a float32 model with eager attention on the CPU and records its greedy continuations of three prompts in
expected.json: these are what the engine must reproduce token for token.
"""
import argparse
import copy
import json
import math
import os
import platform
import random
import re
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_TOK = os.path.join(ROOT, 'test', 'fixtures', 'tokenizers', 'v3-format')
FIXTURE_MODEL = os.path.join(ROOT, 'test', 'fixtures', 'models', 'v3-tiny', 'model.safetensors')

BOS, EOS = '<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>'
PROMPTS = ['The king said', 'Once upon a time', 'In the morning']
SAMPLE_PROMPTS = ['The king said', 'Once upon a time', 'In the morning', 'She was', 'It is a truth',
                  'The ship', 'My dear']

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--out', required=True, help='output folder')
p.add_argument('--corpus', default=os.path.join(ROOT, '.corpus', 'corpus.txt'))
p.add_argument('--sources', default=os.path.join(ROOT, '.corpus', 'sources.json'))
p.add_argument('--time-budget', type=float, default=300.0, help='seconds of training (the schedule is stretched over it)')
p.add_argument('--max-steps', type=int, default=100000)
p.add_argument('--max-epochs', type=float, default=1000.0, help='stop after this many passes over the training tokens')
p.add_argument('--batch-size', type=int, default=64)
p.add_argument('--seq-len', type=int, default=256)
p.add_argument('--lr', type=float, default=3e-3)
p.add_argument('--min-lr-frac', type=float, default=0.05)
p.add_argument('--warmup', type=int, default=150)
p.add_argument('--weight-decay', type=float, default=0.1)
p.add_argument('--bias-update-speed', type=float, default=1e-3, help='gamma of the aux-loss-free balancing')
p.add_argument('--vocab-size', type=int, default=4096)
p.add_argument('--eval-every', type=float, default=20.0, help='seconds between validation passes')
p.add_argument('--experts-impl', default='grouped_mm', help='experts implementation for training')
p.add_argument('--seed', type=int, default=1234)
p.add_argument('--device', default='cuda')
args = p.parse_args()

import torch
import torch.nn.functional as F
import tokenizers
import transformers
import safetensors
from safetensors.torch import load_file
from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers
from transformers import AutoTokenizer, DeepseekV3Config, DeepseekV3ForCausalLM

T0 = time.time()


def log(*a):
    print('[%7.1fs]' % (time.time() - T0), *a, flush=True)


os.makedirs(args.out, exist_ok=True)
random.seed(args.seed)
torch.manual_seed(args.seed)
dev = torch.device(args.device if (args.device != 'cuda' or torch.cuda.is_available()) else 'cpu')
versions = {'python': platform.python_version(), 'torch': torch.__version__, 'transformers': transformers.__version__,
            'tokenizers': tokenizers.__version__, 'safetensors': safetensors.__version__,
            'device': torch.cuda.get_device_name(0) if dev.type == 'cuda' else platform.processor() or 'cpu'}
log('versions', json.dumps(versions))

# ----------------------------------------------------------------------------------------------------------
# 1. Corpus and tokenizer
# ----------------------------------------------------------------------------------------------------------
paras = [l.rstrip('\n') for l in open(args.corpus, encoding='utf-8') if l.strip()]
sources = json.load(open(args.sources)) if os.path.exists(args.sources) else {}
log('corpus: %d paragraphs, %.2f MB' % (len(paras), sum(len(x) for x in paras) / 1e6))

fixture = json.load(open(os.path.join(FIXTURE_TOK, 'tokenizer.json'), encoding='utf-8'))
fixture_base = len(fixture['model']['vocab'])
specials = [t for t in fixture['added_tokens'] if t['id'] < fixture_base]          # bos, eos, pad: ids 0, 1, 2
chat_specials = [t for t in fixture['added_tokens'] if t['id'] >= fixture_base]    # <｜User｜>, <｜Assistant｜>, ...
assert [t['content'] for t in specials[:2]] == [BOS, EOS] and [t['id'] for t in specials] == [0, 1, 2]
n_bpe = args.vocab_size - len(chat_specials)

skeleton = copy.deepcopy(fixture)
skeleton['added_tokens'] = []
skeleton['post_processor'] = None
skeleton['model'] = {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                     'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
                     'vocab': {}, 'merges': []}
tok = Tokenizer.from_str(json.dumps(skeleton))
trainer = trainers.BpeTrainer(
    vocab_size=n_bpe, min_frequency=2, show_progress=False,
    special_tokens=[AddedToken(t['content'], special=True, normalized=False) for t in specials],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(paras, trainer=trainer)
tj = json.loads(tok.to_str())
assert len(tj['model']['vocab']) == n_bpe, len(tj['model']['vocab'])
for t in specials:
    assert tj['model']['vocab'][t['content']] == t['id']
# DeepSeek-V3's conventions: the same pre-tokenizer, decoder, normalizer and BOS post-processor as the
# fixture; specials 0..2 inside the BPE vocabulary, the chat tokens as added tokens after it.
tj['normalizer'] = fixture['normalizer']
tj['pre_tokenizer'] = fixture['pre_tokenizer']
tj['decoder'] = fixture['decoder']
tj['post_processor'] = fixture['post_processor']
tj['truncation'], tj['padding'] = None, None
tj['added_tokens'] = [dict(t) for t in specials] + [dict(t, id=n_bpe + i) for i, t in enumerate(chat_specials)]
tok_json = json.dumps(tj, ensure_ascii=False, indent=2)
tok = Tokenizer.from_str(tok_json)
with open(os.path.join(args.out, 'tokenizer.json'), 'w', encoding='utf-8') as f:
    f.write(tok_json)
assert tok.get_vocab_size(with_added_tokens=True) == args.vocab_size
for t in tj['added_tokens']:
    assert tok.encode(t['content'], add_special_tokens=False).ids == [t['id']], t
probe = 'Hello, world! It is 1811 -- "Mr. Darcy" said: \u00e9t\u00e9 \u4e2d\u6587 \U0001F600\n\n  end'
enc = tok.encode(probe)
assert enc.ids[0] == 0 and tok.decode(enc.ids, skip_special_tokens=True) == probe, tok.decode(enc.ids)
tc = json.load(open(os.path.join(FIXTURE_TOK, 'tokenizer_config.json'), encoding='utf-8'))
tc['model_max_length'] = 1024
with open(os.path.join(args.out, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump(tc, f, ensure_ascii=False, indent=2)
log('tokenizer: %d BPE tokens + %d added; probe -> %d tokens' % (n_bpe, len(chat_specials), len(enc.ids)))

# Token stream: BOS paragraph EOS, paragraphs shuffled; 2% of the paragraphs held out for validation.
order = list(range(len(paras)))
random.Random(args.seed).shuffle(order)
n_val = max(8, len(paras) // 50)
encs = tok.encode_batch([paras[i] for i in order], add_special_tokens=False)


def stream(items):
    out = []
    for e in items:
        out.append(0); out.extend(e.ids); out.append(1)
    return torch.tensor(out, dtype=torch.int32)


val_data, train_data = stream(encs[:n_val]), stream(encs[n_val:])
chars_per_token = sum(len(x) for x in paras) / sum(len(e.ids) for e in encs)
log('tokens: train %d, val %d (%.2f chars per token)' % (len(train_data), len(val_data), chars_per_token))
train_data, val_data = train_data.to(dev), val_data.to(dev)
L = args.seq_len


def get_batch(data, bs, gen=None):
    ix = torch.randint(0, len(data) - L - 1, (bs,), device=dev, generator=gen)
    x = torch.stack([data[i:i + L + 1] for i in ix.tolist()]) if dev.type == 'cpu' else \
        data[ix[:, None] + torch.arange(L + 1, device=dev)[None, :]]
    x = x.long()
    return x[:, :-1], x[:, 1:]


# ----------------------------------------------------------------------------------------------------------
# 2. Model
# ----------------------------------------------------------------------------------------------------------
ROPE = {'type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 256, 'beta_fast': 32, 'beta_slow': 1,
        'mscale': 1.0, 'mscale_all_dim': 1.0}
CFG = dict(vocab_size=args.vocab_size, hidden_size=256, intermediate_size=768, moe_intermediate_size=96,
           num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, n_shared_experts=1,
           n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
           norm_topk_prob=True, kv_lora_rank=64, q_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16,
           v_head_dim=32, first_k_dense_replace=1, max_position_embeddings=1024, rope_theta=10000.0,
           rms_norm_eps=1e-6, hidden_act='silu', initializer_range=0.02, tie_word_embeddings=False,
           attention_bias=False, bos_token_id=0, eos_token_id=1, num_nextn_predict_layers=0)
config = DeepseekV3Config(rope_scaling=dict(ROPE), **CFG)
config._attn_implementation = 'sdpa' if dev.type == 'cuda' else 'eager'
model = DeepseekV3ForCausalLM(config)
try:
    model.set_experts_implementation(args.experts_impl)
except Exception as e:  # noqa: BLE001
    log('experts implementation %s not available (%s); using eager' % (args.experts_impl, e))
    model.set_experts_implementation('eager')
model.to(dev)
n_params = sum(p.numel() for p in model.parameters())
n_active = n_params - sum(p.numel() for n, p in model.named_parameters() if '.experts.' in n) * (1 - CFG['num_experts_per_tok'] / CFG['n_routed_experts'])
log('model: %.3fM parameters (%.3fM active per token), experts=%s, attention=%s' % (
    n_params / 1e6, n_active / 1e6, model.config._experts_implementation, model.config._attn_implementation))

# Auxiliary-loss-free load balancing (DeepSeek-V3 section 2.1.2): count the experts each router picks during
# a training step; after the step, bias_e += gamma * sign(mean_load - load_e).
gates = [l.mlp.gate for l in model.model.layers if hasattr(l.mlp, 'gate')]
loads = [torch.zeros(CFG['n_routed_experts'], device=dev) for _ in gates]
counting = {'on': False}


def make_hook(i):
    def hook(module, inputs, output):
        if counting['on']:
            loads[i] += torch.bincount(output[2].reshape(-1), minlength=CFG['n_routed_experts']).float()
    return hook


for i, g in enumerate(gates):
    g.register_forward_hook(make_hook(i))

decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and 'embed_tokens' not in n]
no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and 'embed_tokens' not in n)]
opt = torch.optim.AdamW([{'params': decay, 'weight_decay': args.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}],
                        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=dev.type == 'cuda')
if dev.type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def lr_at(progress, step):
    warm = min(1.0, (step + 1) / args.warmup)
    cos = args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * warm * cos


def autocast():
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(n_batches=16):
    model.eval()
    g = torch.Generator(device=dev); g.manual_seed(99)
    tot = 0.0
    for _ in range(n_batches):
        x, y = get_batch(val_data, args.batch_size, g)
        with autocast():
            logits = model(input_ids=x).logits
        tot += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1)).item()
    model.train()
    return tot / n_batches


# ----------------------------------------------------------------------------------------------------------
# 3. Training loop (time-boxed)
# ----------------------------------------------------------------------------------------------------------
max_steps = min(args.max_steps, max(1, int(args.max_epochs * len(train_data) / (args.batch_size * L))))
log('training for at most %d steps or %.0f s' % (max_steps, args.time_budget))


def train_step(x, y):
    counting['on'] = True
    try:
        with autocast():
            logits = model(input_ids=x).logits
    finally:
        counting['on'] = False
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss


model.train()
step, t_start, last_eval, ema = 0, time.time(), time.time(), None
best = {'val': float('inf'), 'step': 0, 'state': None}
history = []
tokens_seen = 0
while True:
    elapsed = time.time() - t_start
    progress = max(step / max_steps, elapsed / args.time_budget)
    if progress >= 1.0:
        break
    lr = lr_at(progress, step)
    for g_ in opt.param_groups:
        g_['lr'] = lr
    x, y = get_batch(train_data, args.batch_size)
    if step == 0 and model.config._experts_implementation != 'eager':
        try:
            loss = train_step(x, y)
        except Exception as e:  # noqa: BLE001
            log('experts implementation %s failed in training (%r); using eager' % (model.config._experts_implementation, e))
            model.set_experts_implementation('eager')
            for ld in loads:
                ld.zero_()
            loss = train_step(x, y)
    else:
        loss = train_step(x, y)
    with torch.no_grad():
        for g, ld in zip(gates, loads):
            g.e_score_correction_bias += args.bias_update_speed * torch.sign(ld.mean() - ld)
            ld.zero_()
    step += 1
    tokens_seen += x.numel()
    if step % 25 == 0 or step <= 3:
        lv = loss.item()
        ema = lv if ema is None else 0.9 * ema + 0.1 * lv
        if step % 100 == 0 or step <= 3:
            log('step %5d  epoch %.2f  loss %.4f  ema %.4f  lr %.2e  %.0f tok/s' % (
                step, tokens_seen / len(train_data), lv, ema, lr, tokens_seen / max(1e-9, time.time() - t_start)))
    if time.time() - last_eval > args.eval_every:
        v = evaluate()
        history.append({'step': step, 'seconds': round(time.time() - t_start, 1), 'train_loss_ema': ema, 'val_loss': v})
        log('eval step %d: val loss %.4f' % (step, v))
        if v < best['val']:
            best = {'val': v, 'step': step, 'state': {k: t.detach().to('cpu', copy=True) for k, t in model.state_dict().items()}}
        last_eval = time.time()
train_seconds = time.time() - t_start
final_val = evaluate()
history.append({'step': step, 'seconds': round(train_seconds, 1), 'train_loss_ema': ema, 'val_loss': final_val})
log('trained %d steps in %.1fs (%.0f tokens/s), train loss ema %.4f, val %.4f (best %.4f at step %d)' % (
    step, train_seconds, tokens_seen / train_seconds, ema or float('nan'), final_val, best['val'], best['step']))
if best['state'] is not None and best['val'] < final_val:
    log('restoring the weights of step %d (val %.4f)' % (best['step'], best['val']))
    model.load_state_dict(best['state'])
    final_val = best['val']
    kept_step = best['step']
else:
    kept_step = step

# Expert load after training (on validation data, bias included): how balanced routing is.
model.eval()
counting['on'] = True
with torch.no_grad():
    for ld in loads:
        ld.zero_()
    g = torch.Generator(device=dev); g.manual_seed(7)
    for _ in range(4):
        x, _y = get_batch(val_data, args.batch_size, g)
        with autocast():
            model(input_ids=x)
counting['on'] = False
expert_load = [[round(v, 4) for v in (ld / ld.sum()).tolist()] for ld in loads]
bias_values = [[round(v, 4) for v in g.e_score_correction_bias.tolist()] for g in gates]
for i, (ld, b) in enumerate(zip(expert_load, bias_values)):
    log('layer %d load min %.3f max %.3f (uniform %.3f); bias min %.3f max %.3f' % (
        i + CFG['first_k_dense_replace'], min(ld), max(ld), 1 / CFG['n_routed_experts'], min(b), max(b)))

# ----------------------------------------------------------------------------------------------------------
# 4. Save: bf16 weights, f32 routing bias (as in DeepSeek's releases), DeepSeek-style config.json
# ----------------------------------------------------------------------------------------------------------
model.to('cpu')
bias_f32 = [g.e_score_correction_bias.detach().float().clone() for g in gates]
model.to(torch.bfloat16)
for g, b in zip(gates, bias_f32):
    g.e_score_correction_bias = b.clone()          # keep the routing bias in float32
model.save_pretrained(args.out, safe_serialization=True)
st_path = os.path.join(args.out, 'model.safetensors')


def st_header(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        return json.loads(f.read(n))



def per_expert(sd):
    """transformers 5 keeps the experts of a layer fused (experts.gate_up_proj [E, 2I, H] with gate first,
    experts.down_proj [E, H, I]); DeepSeek's checkpoints have one tensor per expert and projection."""
    out_sd = {}
    for k, v in sd.items():
        if k.endswith('experts.gate_up_proj'):
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out_sd[k[:-len('gate_up_proj')] + '%d.gate_proj.weight' % e] = v[e, :inter].contiguous()
                out_sd[k[:-len('gate_up_proj')] + '%d.up_proj.weight' % e] = v[e, inter:].contiguous()
        elif k.endswith('experts.down_proj'):
            for e in range(v.shape[0]):
                out_sd[k[:-len('down_proj')] + '%d.down_proj.weight' % e] = v[e].contiguous()
        else:
            out_sd[k] = v
    return out_sd

hdr = st_header(st_path)
names = {k for k in hdr if k != '__metadata__'}
if any(k.endswith('experts.gate_up_proj') or k.endswith('experts.down_proj') for k in names):
    # transformers saved the fused expert layout: rewrite with one tensor per expert, as DeepSeek's releases.
    from safetensors.torch import save_file
    save_file(per_expert(load_file(st_path)), st_path, metadata={'format': 'pt'})
    hdr = st_header(st_path)
    names = {k for k in hdr if k != '__metadata__'}
    log('rewrote fused experts as per-expert tensors')


def pattern(n):
    return re.sub(r'\.\d+\.', '.N.', n)


fixture_patterns = {pattern(k) for k in st_header(FIXTURE_MODEL) if k != '__metadata__'}
our_patterns = {pattern(k) for k in names}
assert our_patterns == fixture_patterns, (sorted(our_patterns ^ fixture_patterns))
dtypes = {}
for k in names:
    dtypes.setdefault(hdr[k]['dtype'], []).append(k)
assert set(dtypes) == {'BF16', 'F32'} and all(k.endswith('e_score_correction_bias') for k in dtypes['F32']), dtypes.get('F32')
log('model.safetensors: %d tensors, %d bytes, names match the v3-tiny fixture' % (len(names), os.path.getsize(st_path)))

# config.json as DeepSeek writes it (rope_scaling with type yarn, rope_theta, torch_dtype, scoring_func, ...).
cfg_out = {'architectures': ['DeepseekV3ForCausalLM'], 'model_type': 'deepseek_v3'}
for k in sorted(CFG):
    cfg_out[k] = CFG[k]
cfg_out.update({'rope_scaling': dict(ROPE), 'scoring_func': 'sigmoid', 'topk_method': 'noaux_tc', 'moe_layer_freq': 1,
                'ep_size': 1, 'attention_dropout': 0.0, 'use_cache': True, 'torch_dtype': 'bfloat16',
                'transformers_version': transformers.__version__})
cfg_out = dict(sorted(cfg_out.items()))
with open(os.path.join(args.out, 'config.json'), 'w') as f:
    json.dump(cfg_out, f, indent=2)
    f.write('\n')
gen_cfg = {'bos_token_id': 0, 'eos_token_id': 1, 'do_sample': True, 'temperature': 0.7, 'top_p': 0.9,
           'transformers_version': transformers.__version__}
with open(os.path.join(args.out, 'generation_config.json'), 'w') as f:
    json.dump(gen_cfg, f, indent=2)
    f.write('\n')

# ----------------------------------------------------------------------------------------------------------
# 5. Reference: reload the saved files (bf16 -> f32 exactly) into a float32 eager model on the CPU
# ----------------------------------------------------------------------------------------------------------
torch.set_num_threads(min(16, os.cpu_count() or 1))
ref, info = DeepseekV3ForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation='eager',
                                                  experts_implementation='eager', output_loading_info=True)
ref.eval()
assert not any(info.get(k) for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
assert ref.config.rope_parameters['rope_type'] == 'yarn' and ref.config.q_lora_rank == 128
saved = load_file(st_path)
ref_sd = per_expert(ref.state_dict())
assert set(ref_sd) == set(saved), sorted(set(ref_sd) ^ set(saved))
for k, v in saved.items():
    assert torch.equal(ref_sd[k], v.float()), k
for g in ref.model.layers[1:]:
    assert g.mlp.gate.e_score_correction_bias.dtype == torch.float32
hf_tok = AutoTokenizer.from_pretrained(args.out)


@torch.no_grad()
def greedy(ids, n):
    """Greedy decoding with the KV cache, no stopping at EOS; also the top-1/top-2 margin of every step."""
    out, margins = [], []
    cache = None
    x = torch.tensor([ids])
    for _ in range(n):
        o = ref(input_ids=x, past_key_values=cache, use_cache=True)
        cache = o.past_key_values
        lg = o.logits[0, -1].float()
        top = torch.topk(lg, 2)
        margins.append((top.values[0] - top.values[1]).item())
        nxt = int(top.indices[0])
        out.append(nxt)
        x = torch.tensor([[nxt]])
    return out, margins


expected = []
for prompt in PROMPTS:
    ids = [0] + tok.encode(prompt, add_special_tokens=False).ids
    hf_ids = hf_tok(prompt)['input_ids']
    gen, margins = greedy(ids, 32)
    # Cross-checks: transformers' own generate(), and one full forward pass over prompt + continuation.
    g_out = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=32, do_sample=False, pad_token_id=1)[0, len(ids):].tolist()
    n_cmp = gen.index(1) + 1 if 1 in gen else 32
    with torch.no_grad():
        full = ref(input_ids=torch.tensor([ids + gen])).logits[0].argmax(-1).tolist()
    entry = {'prompt': prompt, 'input_ids': ids, 'output_ids': gen,
             'output_text': tok.decode(gen, skip_special_tokens=False),
             'full_text': tok.decode(ids + gen, skip_special_tokens=True),
             'min_top2_margin': round(min(margins), 6),
             'generate_agrees': g_out[:n_cmp] == gen[:n_cmp],
             'full_forward_agrees': full[len(ids) - 1:len(ids) - 1 + 32] == gen,
             'autotokenizer_agrees': hf_ids == ids}
    expected.append(entry)
    log('greedy %r -> %r  (min margin %.4f, generate %s, full forward %s, AutoTokenizer %s)' % (
        prompt, entry['output_text'], entry['min_top2_margin'], entry['generate_agrees'],
        entry['full_forward_agrees'], entry['autotokenizer_agrees']))

chat = hf_tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True, tokenize=False)
chat_ids = tok.encode(chat, add_special_tokens=False).ids
log('chat template: %r -> %s' % (chat, chat_ids))

samples = []
gs = torch.Generator().manual_seed(args.seed)
for prompt in SAMPLE_PROMPTS:
    ids = [0] + tok.encode(prompt, add_special_tokens=False).ids
    x, out = torch.tensor([ids]), []
    with torch.no_grad():
        cache = None
        for _ in range(48):
            o = ref(input_ids=x, past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            probs = torch.softmax(o.logits[0, -1] / 0.7, -1)
            sp, si = torch.sort(probs, descending=True)
            keep = (torch.cumsum(sp, 0) - sp) < 0.9
            nxt = int(si[keep][torch.multinomial(sp[keep] / sp[keep].sum(), 1, generator=gs)])
            if nxt == 1:
                break
            out.append(nxt)
            x = torch.tensor([[nxt]])
    samples.append({'prompt': prompt, 'text': tok.decode(ids + out, skip_special_tokens=True)})
    log('sample (T=0.7, top-p 0.9): %r' % samples[-1]['text'])

files = sorted(os.listdir(args.out))
record = {
    'name': 'deepwasm-tiny',
    'reference': 'transformers %s (torch %s), float32, eager attention, CPU, weights reloaded from model.safetensors '
                 '(bf16 -> f32 exactly; routing bias stored f32); greedy = argmax of the last logits at each step, '
                 'KV cache, no stop at EOS' % (transformers.__version__, torch.__version__),
    'versions': versions,
    'command': 'python3 tools/train_tiny.py ' + ' '.join('--%s %s' % (k.replace('_', '-'), v) for k, v in sorted(vars(args).items())
                                                         if k not in ('out', 'corpus', 'sources')),
    'corpus': sources,
    'tokenizer': {'bpe_tokens': n_bpe, 'added_tokens': len(chat_specials), 'vocab_size': args.vocab_size,
                  'chars_per_token': round(chars_per_token, 3), 'train_tokens': len(train_data), 'val_tokens': len(val_data)},
    'model': {'parameters': n_params, 'active_parameters': int(n_active), 'config': CFG, 'rope_scaling': ROPE},
    'training': {'steps': step, 'kept_step': kept_step, 'seconds': round(train_seconds, 1), 'tokens_seen': tokens_seen,
                 'epochs': round(tokens_seen / len(train_data), 2), 'batch_size': args.batch_size, 'seq_len': L,
                 'lr': args.lr, 'warmup': args.warmup, 'schedule': 'cosine to %.2f x lr over the time budget' % args.min_lr_frac,
                 'optimizer': 'AdamW (0.9, 0.95), weight decay %.2f, grad clip 1.0, bf16 autocast' % args.weight_decay,
                 'bias_update_speed': args.bias_update_speed, 'final_train_loss_ema': ema, 'final_val_loss': final_val,
                 'history': history, 'expert_load_on_val': expert_load, 'e_score_correction_bias': bias_values,
                 'experts_implementation': model.config._experts_implementation, 'seed': args.seed},
    'prompts': expected,
    'samples_t0.7_topp0.9': samples,
    'chat_template_check': {'text': chat, 'ids': chat_ids},
}
with open(os.path.join(args.out, 'expected.json'), 'w', encoding='utf-8') as f:
    json.dump(record, f, ensure_ascii=False, indent=1)
    f.write('\n')

# Model card
src_lines = '\n'.join('- %s — Debian package `%s`; %s.' % (s['title'], s['debian_package'], s['license'])
                      for s in sources.get('sources', []))
card = f"""# deepwasm-tiny

A tiny model with DeepSeek-V3's architecture, embedded in DeepWasm as the default model (used when no
`--model` is given). It is trained from scratch for a few minutes on public-domain English books, so it writes
recognisable (often archaic, often meandering) English and knows nothing else. It is a test and demo model,
not an assistant: it was not trained on conversations, although its tokenizer carries DeepSeek-V3's chat
template and special tokens.

- Architecture: `DeepseekV3ForCausalLM`, {n_params / 1e6:.2f}M parameters ({n_active / 1e6:.2f}M active per token);
  hidden 256, 4 layers (the first dense, MLP 768; then mixture-of-experts: 16 routed experts of width 96, top-4,
  sigmoid scores with a learned correction bias, 4 groups of which 2 are kept (`noaux_tc`), normalised top-k
  weights times 2.5, 1 shared expert); Multi-head Latent Attention with 8 heads, q_lora_rank 128,
  kv_lora_rank 64, qk_nope 32, qk_rope 16, v 32; YaRN RoPE (factor 4 over 256 original positions,
  1024 positions); vocabulary {args.vocab_size}.
- Weights: `model.safetensors`, bf16 (routing biases f32), tensor names as in DeepSeek's releases.
- Tokenizer: byte-level BPE ({n_bpe} tokens + {len(chat_specials)} chat tokens) trained on the corpus with
  DeepSeek-V3's pre-tokenizer, decoder and special tokens (`<｜begin▁of▁sentence｜>` = 0,
  `<｜end▁of▁sentence｜>` = 1); `tokenizer_config.json` is DeepSeek-V3's, chat template included.
- Training: next-token prediction on paragraphs (`BOS paragraph EOS`), sequences of {L}, batch {args.batch_size},
  AdamW, cosine schedule, bf16 autocast, {step} steps in {train_seconds:.0f} s on one {versions['device']}
  ({tokens_seen / 1e6:.1f}M tokens, {tokens_seen / len(train_data):.1f} epochs); validation loss {final_val:.3f}.
  Expert balancing without auxiliary loss: after each step each routing bias moves by
  {args.bias_update_speed:g} towards balance.
- Made by `tools/fetch-corpus.sh` and `tools/train_tiny.py` in the DeepWasm repository (options in
  `expected.json`: `command`); `expected.json`
  records the corpus, the training run and transformers' greedy continuations that the engine reproduces.

## Corpus (public domain)

{src_lines}

## Greedy continuations (transformers, float32)

""" + '\n'.join('- `%s` → %s' % (e['prompt'], json.dumps(e['output_text'], ensure_ascii=False)) for e in expected) + '\n'
with open(os.path.join(args.out, 'README.md'), 'w', encoding='utf-8') as f:
    f.write(card)
log('wrote', ', '.join('%s (%d bytes)' % (n, os.path.getsize(os.path.join(args.out, n))) for n in sorted(os.listdir(args.out))))
