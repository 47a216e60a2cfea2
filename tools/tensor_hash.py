#!/usr/bin/env python3
"""sha256 of a safetensors file's tensors (names, dtypes, shapes, bytes; sorted by name;
metadata ignored) and of its run's logged losses. Usage: tensor_hash.py RUN_DIR..."""
import hashlib, json, struct, sys
def tensor_hash(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    hdr = json.loads(b[8:8+n]); data = b[8+n:]
    h = hashlib.sha256()
    for k in sorted(x for x in hdr if x != '__metadata__'):
        v = hdr[k]; s, e = v['data_offsets']
        h.update(k.encode()); h.update(v['dtype'].encode()); h.update(str(v['shape']).encode()); h.update(data[s:e])
    return h.hexdigest(), len(hdr) - ('__metadata__' in hdr)
def losses(path):
    out = []
    for line in open(path):
        j = json.loads(line)
        out.append((j['step'], j['loss']))
    return out
for run in sys.argv[1:]:
    th, n = tensor_hash(run + '/model.safetensors')
    ls = losses(run + '/metrics.jsonl')
    lh = hashlib.sha256(repr(ls).encode()).hexdigest()
    print(f"{run.rstrip('/').split('/')[-1]}: tensors={n} sha256={th} losses[{len(ls)}]={lh[:16]} last={ls[-1]}")
