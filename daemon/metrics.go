package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the daemon's Prometheus metrics, in a registry of its own.
type metrics struct {
	registry     *prometheus.Registry
	requests     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	queueDepth   prometheus.Gauge
	rejected     prometheus.Counter
	jobs         *prometheus.CounterVec
	jobSeconds   prometheus.Histogram
	adapterSwaps prometheus.Counter
	modelLoads   prometheus.Counter
	decoding     prometheus.Gauge
	refused      prometheus.Counter
	queueWait    prometheus.Histogram
	stepSeconds  *prometheus.HistogramVec
	draining     prometheus.Gauge
}

func newMetrics(d *Daemon) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refinersd_http_requests_total",
			Help: "HTTP requests, by route and status code."}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "refinersd_http_request_duration_seconds",
			Help: "HTTP request latency, by route.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"route"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refinersd_queue_depth", Help: "Jobs waiting for a model."}),
		rejected:   prometheus.NewCounter(prometheus.CounterOpts{Name: "refinersd_queue_rejected_total", Help: "Jobs refused because the queue was full."}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "refinersd_jobs_total",
			Help: "Jobs that ran, by final state."}, []string{"state"}),
		jobSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "refinersd_job_duration_seconds",
			Help: "Time from a job's start to its end (adapters and forward pass).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		adapterSwaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "refinersd_adapter_swaps_total",
			Help: "Times a model's adapter set was changed (eject and apply)."}),
		modelLoads: prometheus.NewCounter(prometheus.CounterOpts{Name: "refinersd_model_loads_total", Help: "Models loaded into memory."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "refinersd_admission_refused_total",
			Help: "Runs refused because their estimated activation memory was over max_activation."}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "refinersd_queue_wait_seconds",
			Help: "Time jobs waited from submission to their start (queue and model loading).", Buckets: prometheus.ExponentialBuckets(0.001, 2, 18)}),
		stepSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "refinersd_image_step_seconds",
			Help: "Time of one denoising step (U-Net with guidance and solver), by pipeline.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"pipeline"}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refinersd_draining", Help: "1 while the daemon drains (new work refused with 503, taken jobs finishing), else 0."}),
		decoding: prometheus.NewGauge(prometheus.GaugeOpts{Name: "refinersd_requests_decoding", Help: "Run requests whose body is being read (at most max_decodes)."}),
	}
	restarts := prometheus.NewDesc("refinersd_plugin_restarts_total", "Plugin processes restarted after a crash, a hang or a failed health check.", []string{"plugin"}, nil)
	loaded := prometheus.NewDesc("refinersd_models_loaded", "Models in memory (loaded or loading).", nil, nil)
	m.registry.MustRegister(m.requests, m.latency, m.queueDepth, m.rejected, m.jobs, m.jobSeconds, m.adapterSwaps, m.modelLoads, m.decoding, m.refused, m.queueWait, m.stepSeconds, m.draining,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectorFunc{descs: []*prometheus.Desc{restarts, loaded}, collect: func(ch chan<- prometheus.Metric) {
			for name, n := range d.host.Restarts() {
				ch <- prometheus.MustNewConstMetric(restarts, prometheus.CounterValue, float64(n), name)
			}
			d.mu.Lock()
			n := len(d.models)
			d.mu.Unlock()
			ch <- prometheus.MustNewConstMetric(loaded, prometheus.GaugeValue, float64(n))
		}})
	return m
}

// collectorFunc reports metrics read from the daemon at scrape time.
type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
