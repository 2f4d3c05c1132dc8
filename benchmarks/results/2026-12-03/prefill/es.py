import os, sys, signal, threading
sys.path.insert(0, "/work/main/benchmarks")
import engine_server as es, xllamacpp, argparse
ap=argparse.ArgumentParser(); ap.add_argument("--model"); ap.add_argument("--port",type=int); ap.add_argument("--parallel",type=int,default=4); ap.add_argument("--ctx",type=int,default=8192); ap.add_argument("--threads",type=int,default=2)
a=ap.parse_args()
p=es.build_params(a)
for k,v in os.environ.items():
    if k.startswith("XP_"):
        name=k[3:].lower(); setattr(p,name,int(v)); print("set",name,v,flush=True)
if "POLL" in os.environ:
    p.cpuparams.poll=int(os.environ["POLL"]); p.cpuparams_batch.poll=int(os.environ["POLL"]); print("poll",os.environ["POLL"],flush=True)
s=xllamacpp.Server(p); stop=threading.Event()
for sig in (signal.SIGTERM,signal.SIGINT): signal.signal(sig,lambda *_:stop.set())
print("up",flush=True); stop.wait(); del s
