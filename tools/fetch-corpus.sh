#!/usr/bin/env bash
# Build the English training corpus for the embedded tiny model (models/tiny/) from Debian packages.
#
#   tools/fetch-corpus.sh            # writes .corpus/corpus.txt (one paragraph per line) and .corpus/sources.json
#
# Sources (all public domain texts, shipped by Debian):
#   - bible-kjv-text + bible-kjv   King James Version of the Bible (1611; copyright expired; the packaging
#                                   and the `bible` reader are GPL-2+, the text itself is public domain)
#   - r-cran-janeaustenr           Jane Austen's six novels (1811-1818; public domain; package MIT)
#   - r-cran-tokenizers            Herman Melville, "Moby Dick" (1851; public domain; package MIT; the
#                                   Project Gutenberg header and licence footer are removed)
#
# The packages are fetched with `apt-get download` and unpacked with `dpkg -x` under .corpus/ (no root
# needed, nothing is installed system-wide). It needs apt package lists (`apt-get update` once) and a Debian
# or Ubuntu machine with python3 and libreadline (for the `bible` program). The R data files are read by a
# small reader for R's serialisation format below, so R itself is not needed.
#
# .corpus/ is in .gitignore: never committed; it travels to the GPU machine with `carry: [".corpus"]`.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/.corpus"
mkdir -p "$out/deb" "$out/pkgroot" "$out/licenses"

pkgs=(bible-kjv bible-kjv-text r-cran-janeaustenr r-cran-tokenizers)
(
  cd "$out/deb"
  for p in "${pkgs[@]}"; do
    if ! ls "${p}"_*.deb >/dev/null 2>&1; then
      apt-get download "$p" 2>&1 | grep -v '^W: Download is performed unsandboxed' || {
        echo "apt-get download $p failed (run 'apt-get update' first?)" >&2
        exit 1
      }
    fi
  done
)
for f in "$out"/deb/*.deb; do dpkg -x "$f" "$out/pkgroot"; done
for p in "${pkgs[@]}"; do
  cp "$out/pkgroot/usr/share/doc/$p/copyright" "$out/licenses/$p.copyright" 2>/dev/null || true
done
cp "$out/pkgroot/usr/lib/R/site-library/janeaustenr/DESCRIPTION" "$out/licenses/janeaustenr.DESCRIPTION"

# The whole KJV, one verse per line, "Ge1:1 In the beginning ..." (-f turns pretty-printing off).
"$out/pkgroot/usr/bin/bible" -f -m 8192 -p "$out/pkgroot/usr/lib" "gen1:1-rev22:21" </dev/null >"$out/kjv.raw"

python3 - "$out" <<'PY'
import gzip, hashlib, json, os, re, struct, sys, zlib

out = sys.argv[1]

# ---- minimal reader for R's XDR serialisation (enough for character vectors and named lists) ----
class RReader:
    def __init__(self, b):
        self.b, self.p, self.refs = b, 0, []
    def int(self):
        v = struct.unpack_from('>i', self.b, self.p)[0]; self.p += 4; return v
    def raw(self, n):
        v = self.b[self.p:self.p + n]; self.p += n; return v
    def header(self):
        assert self.raw(2) == b'X\n', 'only XDR-format R serialisation is supported'
        version = self.int(); self.int(); self.int()
        if version == 3:
            self.raw(self.int())  # native encoding name
    def item(self):
        flags = self.int()
        t, has_attr, has_tag = flags & 0xff, bool(flags & 512), bool(flags & 1024)
        if t in (254, 242, 251, 253):  # NILVALUE, EMPTYENV, MISSINGARG, GLOBALENV
            return None
        if t == 255:  # REFSXP
            i = flags >> 8
            return self.refs[(i or self.int()) - 1]
        if t == 1:  # SYMSXP
            name = self.item(); self.refs.append(name); return name
        if t == 9:  # CHARSXP
            n = self.int()
            return None if n == -1 else self.raw(n).decode('utf-8', 'replace')
        if t == 2:  # LISTSXP (pairlist): only used for attributes here
            d = {}
            while True:
                if has_attr: self.item()
                tag = self.item() if has_tag else None
                d[tag] = self.item()
                flags = self.int(); t = flags & 0xff
                if t == 254: return d
                has_attr, has_tag = bool(flags & 512), bool(flags & 1024)
        if t in (10, 13):  # LGLSXP, INTSXP
            n = self.int(); v = list(struct.unpack_from('>%di' % n, self.b, self.p)); self.p += 4 * n
        elif t == 14:  # REALSXP
            n = self.int(); v = list(struct.unpack_from('>%dd' % n, self.b, self.p)); self.p += 8 * n
        elif t in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            v = [self.item() for _ in range(self.int())]
        else:
            raise ValueError('unsupported R object type %d' % t)
        attr = self.item() if has_attr else None
        return (v, attr) if attr else v

def r_lazyload(prefix):
    """Objects of an R lazy-load database (data/Rdata.rdx + .rdb) as {name: value}."""
    r = RReader(gzip.open(prefix + '.rdx').read()); r.header(); index = r.item()
    (parts, names) = index
    assert names['names'][:3] == ['variables', 'references', 'compressed'] and parts[2] == [1], 'zlib lazy-load db'
    (offsets, attr) = parts[0]
    blob = open(prefix + '.rdb', 'rb').read()
    objs = {}
    for name, (off, length) in zip(attr['names'], offsets):
        o = RReader(zlib.decompress(blob[off + 4:off + length])); o.header()
        v = o.item()
        objs[name] = v[0] if isinstance(v, tuple) else v
    return objs

# ---- cleaning ----
def paragraphs(lines):
    """Blank-line separated paragraphs, soft line breaks joined with spaces."""
    para = []
    for line in lines:
        line = line.strip()
        if line:
            para.append(line)
        elif para:
            yield ' '.join(para); para = []
    if para:
        yield ' '.join(para)

HEADING = re.compile(r'^(CHAPTER|Chapter|VOLUME|Volume|BOOK|PART|Epilogue|EPILOGUE)\b')

def clean_prose(p):
    p = p.replace('\ufeff', '').replace('_', '')     # _italics_ markup
    p = re.sub(r'\s+', ' ', p).strip()
    if not p or HEADING.match(p):
        return None
    letters = [c for c in p if c.isalpha()]
    if len(letters) < 20 or not any(c.islower() for c in letters):   # titles, "THE END", "FINIS"
        return None
    if p.startswith('[') or 'Gutenberg' in p or p.startswith('(18'):
        return None
    return p

corpus = {}

# Jane Austen
lib = os.path.join(out, 'pkgroot/usr/lib/R/site-library')
austen = r_lazyload(os.path.join(lib, 'janeaustenr/data/Rdata'))
paras = []
for name in ['sensesensibility', 'prideprejudice', 'mansfieldpark', 'emma', 'northangerabbey', 'persuasion']:
    lines = [s or '' for s in austen[name]]
    paras += [q for q in (clean_prose(p) for p in paragraphs(lines)) if q]
corpus['austen'] = paras

# Herman Melville, Moby Dick: from chapter 1 to the end of the Epilogue (no Gutenberg header, licence,
# front matter or table of contents).
md = r_lazyload(os.path.join(lib, 'tokenizers/data/Rdata'))['mobydick'][0]
md = md.replace('\r\n', '\n').split('\n')
start = next(i for i, l in enumerate(md) if l.startswith('CHAPTER 1. Loomings.') and i > 500)
end = next(i for i, l in enumerate(md) if l.startswith('*** END OF THIS PROJECT GUTENBERG'))
corpus['melville'] = [q for q in (clean_prose(p) for p in paragraphs(md[start:end])) if q]

# King James Bible: drop the verse references; a paragraph is a run of verses of one chapter, about
# 300-700 characters.
paras, cur, cur_ch = [], [], None
for line in open(os.path.join(out, 'kjv.raw'), encoding='utf-8', errors='replace'):
    m = re.match(r'^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$', line.rstrip('\n'))
    if not m:
        continue
    ch = (m.group(1), m.group(2))
    text = re.sub(r'\s+', ' ', m.group(4)).strip()
    if cur and (ch != cur_ch or sum(len(t) + 1 for t in cur) >= 300):
        paras.append(' '.join(cur)); cur = []
    cur_ch = ch
    cur.append(text)
if cur:
    paras.append(' '.join(cur))
corpus['kjv'] = paras

sources = [
    {'name': 'austen', 'title': 'Jane Austen: Sense and Sensibility, Pride and Prejudice, Mansfield Park, Emma, Northanger Abbey, Persuasion (1811-1818)',
     'debian_package': 'r-cran-janeaustenr 1.0.0', 'license': 'public domain text (Project Gutenberg transcription); R package MIT (Julia Silge)'},
    {'name': 'melville', 'title': 'Herman Melville: Moby Dick; or The Whale (1851)',
     'debian_package': 'r-cran-tokenizers 0.3.0 (data set mobydick)', 'license': 'public domain text (Project Gutenberg eBook #2701, header and licence removed); R package MIT'},
    {'name': 'kjv', 'title': 'The Bible, King James Version (1611)',
     'debian_package': 'bible-kjv-text 4.38 (read with bible-kjv)', 'license': 'public domain text (copyright expired; packaging GPL-2+)'},
]
with open(os.path.join(out, 'corpus.txt'), 'w', encoding='utf-8') as f:
    for s in sources:
        ps = corpus[s['name']]
        f.write('\n'.join(ps) + '\n')
        s['paragraphs'] = len(ps)
        s['characters'] = sum(len(p) for p in ps)
data = open(os.path.join(out, 'corpus.txt'), 'rb').read()
meta = {'file': 'corpus.txt', 'format': 'UTF-8, one paragraph per line', 'bytes': len(data),
        'sha256': hashlib.sha256(data).hexdigest(), 'sources': sources}
json.dump(meta, open(os.path.join(out, 'sources.json'), 'w'), indent=2)
print(json.dumps(meta, indent=2))
PY
rm -rf "$out/pkgroot" "$out/kjv.raw"
