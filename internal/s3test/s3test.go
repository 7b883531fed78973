// Package s3test runs a real S3 server on loopback for tests and for
// `make scaleout`: the Versity S3 Gateway (versitygw) over a local folder,
// built once by scripts/build-versitygw.sh from its own module
// (tools/versitygw) and cached.
package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Credentials of the server's root user (loopback only).
const (
	AccessKey = "refinerstestaccess"
	SecretKey = "refiners-test-secret-key-0123456789"
)

// Server is a running versitygw.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT
	Dir      string // the folder it serves: one sub-folder per bucket
	cmd      *exec.Cmd
	log      *lockedBuffer
	exited   chan error
}

// RepoRoot is the repository's root folder (from this file's path).
func RepoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return "", errors.New("s3test: cannot find the repository (built with -trimpath?)")
	}
	return filepath.Dir(filepath.Dir(filepath.Dir(file))), nil
}

// Binary builds versitygw if needed (minutes the first time) and returns
// its path.
func Binary() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	var out, errb bytes.Buffer
	cmd := exec.Command(filepath.Join(root, "scripts", "build-versitygw.sh"))
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("s3test: scripts/build-versitygw.sh failed (the S3 tests need versitygw, built from tools/versitygw with the Go module proxy): %v\n%s", err, errb.String())
	}
	return strings.TrimSpace(out.String()), nil
}

// Start runs versitygw over dir on a free loopback port and waits until it
// answers.
func Start(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Endpoint: "http://" + addr, Dir: dir, log: &lockedBuffer{}, exited: make(chan error, 1)}
	s.cmd = exec.Command(bin, "--access", AccessKey, "--secret", SecretKey, "--port", addr, "--health", "/health", "posix", dir)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("s3test: start %s: %w", bin, err)
	}
	go func() { s.exited <- s.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.Endpoint + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s, nil
			}
		}
		select {
		case err := <-s.exited:
			return nil, fmt.Errorf("s3test: versitygw exited (%v):\n%s", err, s.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("s3test: versitygw did not answer on %s within 30s:\n%s", addr, s.log.String())
		}
	}
}

// Env is the environment a client needs to reach the server (S3Env).
func (s *Server) Env() map[string]string {
	return map[string]string{"AWS_ACCESS_KEY_ID": AccessKey, "AWS_SECRET_ACCESS_KEY": SecretKey,
		"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": s.Endpoint}
}

// Getenv reads Env, and nothing else.
func (s *Server) Getenv(k string) string { return s.Env()[k] }

// MakeBucket creates a bucket.
func (s *Server) MakeBucket(name string) error {
	c, err := minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		return fmt.Errorf("s3test: make bucket %s: %w", name, err)
	}
	return nil
}

// Stop kills the server.
func (s *Server) Stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// Log is what the server printed.
func (s *Server) Log() string { return s.log.String() }

// lockedBuffer is a bytes.Buffer the server writes while a test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
