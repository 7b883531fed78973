package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestServeLoad is a bounded load test on loopback: a fixed number of
// clients send a fixed number of requests each (capped in time), mixing
// models and adapters, against a daemon with a small queue. Every response
// must be correct (bit for bit against `refinersd run`), none lost; a full
// queue answers 429 at once, and the client retries. It reports throughput,
// latency percentiles, the 429s and the adapter swaps grouping saved.
func TestServeLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: runs without -short")
	}
	f := newDaemonFixture(t)
	type variant struct {
		model   string
		scale   float64 // 0: no adapter
		request map[string]any
		want    []byte
	}
	variants := []*variant{{model: "clip"}, {model: "clip", scale: 0.7}, {model: "clip", scale: 0.3}, {model: "unet"}}
	for _, v := range variants {
		v.request = map[string]any{"model": v.model}
		var extra []string
		if v.scale != 0 {
			v.request["adapters"] = loraAdapter(v.scale)
			extra = []string{"--adapter", fmt.Sprintf("lora:%s:{\"scale\": %g}", f.lora, v.scale)}
		}
		v.want = f.runDirect(t, v.model, extra...)["output.0"]
	}
	const (
		clients    = 8
		perClient  = 25
		queueSize  = 3
		maxRetries = 200
		timeCap    = 3 * time.Minute
	)
	s := f.serve(t, nil, "--addr", "127.0.0.1:0", "--queue-size", strconv.Itoa(queueSize))
	type outcome struct {
		latency  time.Duration
		rejected int
		ok       bool
		err      string
	}
	var mu sync.Mutex
	var outcomes []outcome
	sent := map[*variant]int{}
	deadline := time.Now().Add(timeCap)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for range perClient {
				if time.Now().After(deadline) {
					return
				}
				v := variants[rng.IntN(len(variants))]
				o := outcome{}
				begin := time.Now()
				for attempt := 0; ; attempt++ {
					ct, body := multipartRun(t, v.request, f.inputs[v.model])
					req, _ := http.NewRequest("POST", s.url+"/v1/run", body)
					req.Header.Set("Content-Type", ct)
					req.Header.Set("Accept", "application/vnd.safetensors")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						o.err = err.Error()
						break
					}
					var buf bytes.Buffer
					buf.ReadFrom(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusTooManyRequests && attempt < maxRetries {
						if resp.Header.Get("Retry-After") == "" {
							o.err = "429 without Retry-After"
							break
						}
						o.rejected++
						time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond)
						continue
					}
					if resp.StatusCode != 200 {
						o.err = fmt.Sprintf("%d %.200s", resp.StatusCode, buf.Bytes())
						break
					}
					o.ok = bytes.Equal(tensorsOf(t, buf.Bytes())["output.0"], v.want)
					if !o.ok {
						o.err = "wrong output"
					}
					break
				}
				o.latency = time.Since(begin)
				mu.Lock()
				outcomes = append(outcomes, o)
				sent[v]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	var lat []time.Duration
	rejected := 0
	for _, o := range outcomes {
		if !o.ok {
			t.Errorf("request failed: %s", o.err)
		}
		rejected += o.rejected
		lat = append(lat, o.latency)
	}
	if len(outcomes) != clients*perClient {
		t.Errorf("%d responses for %d requests (time cap %v reached?)", len(outcomes), clients*perClient, timeCap)
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	_, _, metrics := s.do(t, "GET", "/metrics", "", nil)
	swaps := metricValue(string(metrics), "refinersd_adapter_swaps_total")
	loraRequests := sent[variants[1]] + sent[variants[2]]
	t.Logf("load: %d clients x %d requests in %.2f s: %.1f req/s; latency p50 %v, p90 %v, p99 %v, max %v; %d answered 429 at once and retried (queue %d); every response correct: %v",
		clients, perClient, elapsed.Seconds(), float64(len(outcomes))/elapsed.Seconds(), pct(0.5).Round(time.Millisecond), pct(0.9).Round(time.Millisecond),
		pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), rejected, queueSize, !t.Failed())
	t.Logf("grouping: %d requests with a LoRA (2 different sets, mixed with %d without), %s adapter applications", loraRequests, sent[variants[0]], swaps)
	if rejected == 0 {
		t.Error("no request met a full queue: the test did not exercise 429")
	}
	if n, _ := strconv.Atoi(swaps); n >= loraRequests {
		t.Errorf("%d adapter applications for %d LoRA requests: no grouping", n, loraRequests)
	}
}

func metricValue(metrics, name string) string {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(metrics)
	if m == nil {
		return "?"
	}
	return m[1]
}
