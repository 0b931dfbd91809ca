#!/usr/bin/env python3
"""DeepSeek-V3's multi-token-prediction (MTP) layer for the embedded model, and a random one for a fixture.

    PYTHONUNBUFFERED=1 python3 tools/train_mtp.py --work /tmp/mtp --time-budget 120      # on the GPU machine
    python3 tools/train_mtp.py --merge /tmp/mtp/tiny-mtp-layer.safetensors               # here: no torch needed

The MTP layer k = L (L = num_hidden_layers) computes, for position i (DeepSeek-V3 report, section 2.2, and
the public serving code, SGLang's and vLLM's deepseek_mtp):

    h'_i   = eh_proj([enorm(embed(t_{i+1})); hnorm(h_i)])      embedding first, as the released weights expect
    o_i    = decoder block L (MLA with its own cache, MoE), at position i
    logits = shared_head.head(shared_head.norm(o_i))            predicts t_{i+2}

h_i is the main model's last hidden state AFTER its final norm (model.norm, what the head reads): the report
calls it "the representation of the i-th token at the (k-1)-th depth" without saying, and the serving code that
runs DeepSeek's released MTP weights decides it: vLLM's DeepseekV2Model.forward returns
self.norm(hidden_states, residual), and its MTP proposer feeds those states (the ones compute_logits puts
through lm_head alone) to hnorm; SGLang's logits processor captures the same normed states. The report writes
the concatenation as [h; emb]; the released weights and those implementations put the embedding first.

It (1) trains ONLY the MTP layer of models/tiny with the main model frozen (so every existing reference of the
embedded model stays valid), with the MTP loss (cross-entropy of t_{i+2}); the layer starts as a copy of the
last decoder layer, its embedding and head are copies of the main model's (shared in DeepSeek-V3) and stay
frozen; (2) writes the layer's tensors in DeepSeek's release layout (bf16, routing bias f32) to
WORK/tiny-mtp-layer.safetensors and the MTP logits of a few inputs, from a float32 eager reload on the CPU, to
WORK/tiny-mtp-expected.safetensors; (3) builds test/fixtures/models/v3-tiny-mtp: v3-tiny with a random MTP layer
(f32) and its MTP logits. Transformers has no MTP forward (it skips layer L), so the reference here runs
transformers' own decoder layer L (loaded with num_hidden_layers = L + 1) between the MTP's own norms and
projections.
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'models', 'tiny')
V3_TINY = os.path.join(ROOT, 'test', 'fixtures', 'models', 'v3-tiny')
EXTRA = ('embed_tokens.weight', 'enorm.weight', 'hnorm.weight', 'eh_proj.weight', 'shared_head.norm.weight',
         'shared_head.head.weight')

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--work', help='output folder for the trained layer, its references and the fixture')
p.add_argument('--merge', help='add the tensors of this file to models/tiny/model.safetensors and set num_nextn_predict_layers 1')
p.add_argument('--corpus', default=os.path.join(ROOT, '.corpus', 'corpus.txt'))
p.add_argument('--time-budget', type=float, default=120.0)
p.add_argument('--batch-size', type=int, default=64)
p.add_argument('--seq-len', type=int, default=256)
p.add_argument('--lr', type=float, default=2e-3)
p.add_argument('--seed', type=int, default=1234)
args = p.parse_args()


def st_read(path):
    """(header, data) of a safetensors file, without torch."""
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        return header, f.read()


def st_merge(path, extra_path):
    """Appends the tensors of extra_path to path (pure Python: the bytes are copied as they are)."""
    h1, d1 = st_read(path)
    h2, d2 = st_read(extra_path)
    out = {k: v for k, v in h1.items() if k != '__metadata__'}
    names = [k for k in h2 if k != '__metadata__']
    overlap = [k for k in names if k in out]
    if overlap:
        # Merging twice replaces the layer: drop the old copy's bytes with it.
        raise SystemExit('%s already holds %s; restore it from git first' % (path, overlap[0]))
    blobs = [d1]
    off = len(d1)
    for k in sorted(names, key=lambda k: h2[k]['data_offsets'][0]):
        a, b = h2[k]['data_offsets']
        out[k] = dict(h2[k], data_offsets=[off, off + b - a])
        blobs.append(d2[a:b])
        off += b - a
    out['__metadata__'] = h1.get('__metadata__', {'format': 'pt'})
    hb = json.dumps(out, separators=(',', ':')).encode()
    hb += b' ' * (-len(hb) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(hb)) + hb)
        for blob in blobs:
            f.write(blob)


if args.merge:
    st_merge(os.path.join(TINY, 'model.safetensors'), args.merge)
    cfg_path = os.path.join(TINY, 'config.json')
    cfg = json.load(open(cfg_path))
    cfg['num_nextn_predict_layers'] = 1
    with open(cfg_path, 'w') as f:
        json.dump(cfg, f, indent=2)
        f.write('\n')
    print('merged %s into %s/model.safetensors; num_nextn_predict_layers = 1' % (args.merge, TINY))
    sys.exit(0)
if not args.work:
    p.error('give --work (train and record) or --merge')

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3ForCausalLM

T0 = time.time()


def log(*a):
    print('[%7.1fs]' % (time.time() - T0), *a, flush=True)


def per_expert(sd):
    """transformers 5 keeps a layer's experts fused (gate_up_proj [E, 2I, H] gate first, down_proj [E, H, I]);
    DeepSeek's checkpoints hold one tensor per expert and projection."""
    out = {}
    for k, v in sd.items():
        if k.endswith('experts.gate_up_proj'):
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[k[:-len('gate_up_proj')] + '%d.gate_proj.weight' % e] = v[e, :inter].contiguous()
                out[k[:-len('gate_up_proj')] + '%d.up_proj.weight' % e] = v[e, inter:].contiguous()
        elif k.endswith('experts.down_proj'):
            for e in range(v.shape[0]):
                out[k[:-len('down_proj')] + '%d.down_proj.weight' % e] = v[e].contiguous()
        else:
            out[k] = v
    return out


def rms(x, w, eps):
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class Mtp(torch.nn.Module):
    """The MTP layer around transformers' decoder layer L."""

    def __init__(self, block, rotary, extra, eps):
        super().__init__()
        self.block, self.rotary, self.eps = block, rotary, eps
        self.p = torch.nn.ParameterDict({k.replace('.', '_'): torch.nn.Parameter(v) for k, v in extra.items()})

    def w(self, name):
        return self.p[name.replace('.', '_')]

    def forward(self, h, next_ids):
        """h: [B, T, H] main hidden states after the final norm; next_ids: [B, T] the tokens t_{i+1}."""
        e = rms(F.embedding(next_ids, self.w('embed_tokens.weight')), self.w('enorm.weight'), self.eps)
        x = F.linear(torch.cat([e, rms(h, self.w('hnorm.weight'), self.eps)], -1), self.w('eh_proj.weight'))
        t = x.shape[1]
        pos = torch.arange(t, device=x.device)[None].expand(x.shape[0], -1)
        mask = torch.full((t, t), float('-inf'), device=x.device, dtype=x.dtype).triu(1)[None, None]
        o = self.block(x, attention_mask=mask, position_ids=pos, position_embeddings=self.rotary(x, pos),
                       past_key_values=None, use_cache=False)
        o = o[0] if isinstance(o, tuple) else o
        return F.linear(rms(o, self.w('shared_head.norm.weight'), self.eps), self.w('shared_head.head.weight'))


def hidden_after_norm(model, ids):
    """The main model's last hidden states after model.norm (the head's input), for ids [B, T]."""
    got = {}
    hook = model.model.norm.register_forward_hook(lambda m, a, out: got.__setitem__('h', out))
    try:
        model(input_ids=ids)
    finally:
        hook.remove()
    return got['h']


def load_pair(folder, layers, dtype, device, attn):
    """The main model and the one with layer L loaded too (its decoder block is the MTP's block)."""
    kw = dict(dtype=dtype, attn_implementation=attn, experts_implementation='eager')
    main = DeepseekV3ForCausalLM.from_pretrained(folder, **kw).to(device).eval()
    big, info = DeepseekV3ForCausalLM.from_pretrained(folder, num_hidden_layers=layers + 1, output_loading_info=True, **kw)
    return main, big.to(device), info


def mtp_state(mtp, layer, dtype):
    """The layer's tensors as DeepSeek names them, in `dtype` (the routing bias stays f32)."""
    out = {}
    for k, v in per_expert({k: v.detach().cpu() for k, v in mtp.block.state_dict().items()}).items():
        out['model.layers.%d.%s' % (layer, k)] = v.float() if k.endswith('e_score_correction_bias') else v.to(dtype)
    for k in EXTRA:
        out['model.layers.%d.%s' % (layer, k)] = mtp.w(k).detach().cpu().to(dtype).contiguous()
    return out


@torch.no_grad()
def reference(folder, layer, prompts):
    """A float32 eager CPU reload of folder: MTP logits [T-1, V] for each id list (rows i: h_i with t_{i+1})."""
    main, big, info = load_pair(folder, layer, torch.float32, 'cpu', 'eager')
    missing = [k for k in info.get('missing_keys', []) if '.%d.' % layer in k]
    assert not missing, missing
    sd = load_file(os.path.join(folder, 'model.safetensors'))
    extra = {k: sd['model.layers.%d.%s' % (layer, k)].float() for k in EXTRA}
    mtp = Mtp(big.model.layers[layer], main.model.rotary_emb, extra, main.config.rms_norm_eps).eval()
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        out.append(mtp(hidden_after_norm(main, x)[:, :-1], x[:, 1:])[0])
    return out


torch.manual_seed(args.seed)
os.makedirs(args.work, exist_ok=True)
dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
torch.set_num_threads(min(16, os.cpu_count() or 1))

# ---------------------------------------------------------------------------------------------------------
# 1. The random MTP fixture: v3-tiny plus layer L, random, its embedding and head copied from the main model
# ---------------------------------------------------------------------------------------------------------
fx = os.path.join(args.work, 'v3-tiny-mtp')
shutil.rmtree(fx, ignore_errors=True)
shutil.copytree(V3_TINY, fx)
cfg = json.load(open(os.path.join(fx, 'config.json')))
L = cfg['num_hidden_layers']
main, big, _ = load_pair(fx, L, torch.float32, 'cpu', 'eager')
block = big.model.layers[L]
with torch.no_grad():
    for n, t in block.named_parameters():
        t.copy_(1 + 0.2 * torch.randn_like(t) if n.endswith('norm.weight') else 0.08 * torch.randn_like(t))
    block.mlp.gate.e_score_correction_bias.copy_(0.1 * torch.randn_like(block.mlp.gate.e_score_correction_bias))
H = cfg['hidden_size']
extra = {'embed_tokens.weight': main.model.embed_tokens.weight.detach().clone(),
         'enorm.weight': 1 + 0.2 * torch.randn(H), 'hnorm.weight': 1 + 0.2 * torch.randn(H),
         'eh_proj.weight': 0.08 * torch.randn(H, 2 * H), 'shared_head.norm.weight': 1 + 0.2 * torch.randn(H),
         'shared_head.head.weight': main.lm_head.weight.detach().clone()}
mtp = Mtp(block, main.model.rotary_emb, extra, cfg['rms_norm_eps'])
sd = load_file(os.path.join(fx, 'model.safetensors'))
sd.update(mtp_state(mtp, L, torch.float32))
save_file(sd, os.path.join(fx, 'model.safetensors'), metadata={'format': 'pt'})
cfg['num_nextn_predict_layers'] = 1
with open(os.path.join(fx, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2)
    f.write('\n')
exp = load_file(os.path.join(fx, 'expected.safetensors'))
seq = exp['input_ids'].tolist() + exp['gen_ids'].tolist()
(logits,) = reference(fx, L, [seq])
save_file({'input_ids': torch.tensor(seq, dtype=torch.int32), 'mtp_logits': logits.contiguous()},
          os.path.join(fx, 'mtp-expected.safetensors'))
log('fixture v3-tiny-mtp: MTP layer %d, %d reference rows, |logits| max %.3f' % (L, logits.shape[0], logits.abs().max()))

# ---------------------------------------------------------------------------------------------------------
# 2. Train the embedded model's MTP layer, main model frozen
# ---------------------------------------------------------------------------------------------------------
tcfg = json.load(open(os.path.join(TINY, 'config.json')))
L = tcfg['num_hidden_layers']
main, big, _ = load_pair(TINY, L, torch.float32, dev, 'sdpa')
for t in main.parameters():
    t.requires_grad_(False)
block = big.model.layers[L]
block.load_state_dict(big.model.layers[L - 1].state_dict())
H = tcfg['hidden_size']
extra = {'embed_tokens.weight': main.model.embed_tokens.weight.detach().clone(),
         'enorm.weight': torch.ones(H, device=dev), 'hnorm.weight': torch.ones(H, device=dev),
         'eh_proj.weight': torch.cat([0.02 * torch.randn(H, H, device=dev), torch.eye(H, device=dev)], 1),
         'shared_head.norm.weight': main.model.norm.weight.detach().clone(),
         'shared_head.head.weight': main.lm_head.weight.detach().clone()}
mtp = Mtp(block, main.model.rotary_emb, extra, tcfg['rms_norm_eps']).to(dev).train()
frozen = {'embed_tokens_weight', 'shared_head_head_weight'}
params = [t for n, t in mtp.named_parameters() if n.split('.')[-1] not in frozen]
for n, t in mtp.named_parameters():
    t.requires_grad_(n.split('.')[-1] not in frozen)
opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

from tokenizers import Tokenizer
tok = Tokenizer.from_file(os.path.join(TINY, 'tokenizer.json'))
paras = [l.rstrip('\n') for l in open(args.corpus, encoding='utf-8') if l.strip()]
stream = []
for e in tok.encode_batch(paras, add_special_tokens=False):
    stream += [0] + e.ids + [1]
data = torch.tensor(stream, dtype=torch.long, device=dev)
n_val = len(data) // 50
val, train = data[:n_val], data[n_val:]
S = args.seq_len


def batch(src, bs, gen=None):
    ix = torch.randint(0, len(src) - S - 2, (bs,), device=dev, generator=gen)
    return src[ix[:, None] + torch.arange(S + 2, device=dev)[None]]


def mtp_loss(x):
    """Cross-entropy of t_{i+2} from (h_i, t_{i+1}); also the share where its argmax is the token."""
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        h = hidden_after_norm(main, x[:, :S])
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        lg = mtp(h, x[:, 1:S + 1]).float()
    y = x[:, 2:S + 2]
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1)), (lg.argmax(-1) == y).float().mean()


step, t0, history = 0, time.time(), []
while time.time() - t0 < args.time_budget:
    frac = (time.time() - t0) / args.time_budget
    for g in opt.param_groups:
        g['lr'] = args.lr * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
    loss, _acc = mtp_loss(batch(train, args.batch_size))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    step += 1
    if step % 200 == 0:
        mtp.eval()
        g = torch.Generator(device=dev).manual_seed(99)
        with torch.no_grad():
            vl, va = zip(*[mtp_loss(batch(val, args.batch_size, g)) for _ in range(8)])
        mtp.train()
        history.append({'step': step, 'seconds': round(time.time() - t0, 1), 'val_loss': sum(map(float, vl)) / 8,
                        'val_top1': sum(map(float, va)) / 8})
        log('step %d: MTP val loss %.4f, top-1 %.3f' % (step, history[-1]['val_loss'], history[-1]['val_top1']))
log('trained the MTP layer %d steps in %.0f s' % (step, time.time() - t0))

# ---------------------------------------------------------------------------------------------------------
# 3. Save the layer (bf16), merge it into a copy of models/tiny, record the references from that copy
# ---------------------------------------------------------------------------------------------------------
layer_file = os.path.join(args.work, 'tiny-mtp-layer.safetensors')
save_file(mtp_state(mtp, L, torch.bfloat16), layer_file, metadata={'format': 'pt'})
merged = os.path.join(args.work, 'tiny')
shutil.rmtree(merged, ignore_errors=True)
shutil.copytree(TINY, merged)
st_merge(os.path.join(merged, 'model.safetensors'), layer_file)
mcfg = json.load(open(os.path.join(merged, 'config.json')))
mcfg['num_nextn_predict_layers'] = 1
json.dump(mcfg, open(os.path.join(merged, 'config.json'), 'w'), indent=2)
record = json.load(open(os.path.join(TINY, 'expected.json')))
prompts = [e['input_ids'] + e['output_ids'] for e in record['prompts']]
outs = reference(merged, L, prompts)
tensors, summary = {}, []
for k, (ids, lg) in enumerate(zip(prompts, outs)):
    tensors['input_ids_%d' % k] = torch.tensor(ids, dtype=torch.int32)
    tensors['mtp_logits_%d' % k] = lg.contiguous()
    # Would the MTP's greedy guess for t_{i+2} be the main model's greedy token (the continuation's part)?
    n0 = len(record['prompts'][k]['input_ids'])
    hit = [int(lg[i].argmax()) == ids[i + 2] for i in range(n0 - 2, len(ids) - 2)]
    summary.append({'prompt': record['prompts'][k]['prompt'], 'greedy_agreement': sum(hit) / len(hit)})
save_file(tensors, os.path.join(args.work, 'tiny-mtp-expected.safetensors'))
with open(os.path.join(args.work, 'tiny-mtp.json'), 'w') as f:
    json.dump({'command': 'python3 tools/train_mtp.py ' + ' '.join(sys.argv[1:]), 'steps': step, 'history': history,
               'torch': torch.__version__, 'device': torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu',
               'greedy_agreement_on_recorded_continuations': summary}, f, indent=1)
log('references:', json.dumps(summary))
