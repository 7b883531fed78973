package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Backend keeps objects in an S3 bucket under a prefix. A PUT makes an
// object appear whole or not at all, which is the atomicity the store
// needs; large files go up in parts, assembled by the server only once
// every part arrived.
type s3Backend struct {
	client  *minio.Client
	bucket  string
	prefix  string // "" or ending in "/"
	url     string
	staging string // local folder for files on their way up
}

// S3Env is what the S3 backend reads from the environment: the variables
// of the AWS command line and SDKs.
//
//	AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN  credentials
//	(else ~/.aws/credentials with AWS_PROFILE, else the instance's or the
//	pod's role: AWS_WEB_IDENTITY_TOKEN_FILE, container or EC2 metadata)
//	AWS_REGION or AWS_DEFAULT_REGION  the bucket's region (asked from the
//	server when unset)
//	AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL  another S3-compatible server
//	(http://host:port or https://host), addressed path-style
const S3Env = "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL"

// parseS3URL splits s3://bucket/prefix.
func parseS3URL(ref string) (bucket, prefix string, err error) {
	rest, ok := strings.CutPrefix(ref, "s3://")
	if !ok {
		return "", "", fmt.Errorf("store %q: want s3://bucket/prefix", ref)
	}
	bucket, prefix, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", fmt.Errorf("store %q: no bucket (want s3://bucket/prefix)", ref)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		if path.Clean(prefix) != prefix || strings.Contains(prefix, "..") {
			return "", "", fmt.Errorf("store %q: prefix %q is not a clean path", ref, prefix)
		}
		prefix += "/"
	}
	return bucket, prefix, nil
}

func openS3(ref, staging string, getenv func(string) string) (*s3Backend, error) {
	bucket, prefix, err := parseS3URL(ref)
	if err != nil {
		return nil, err
	}
	region := getenv("AWS_REGION")
	if region == "" {
		region = getenv("AWS_DEFAULT_REGION")
	}
	endpoint, secure, lookup := "s3.amazonaws.com", true, minio.BucketLookupAuto
	if region != "" {
		endpoint = "s3." + region + ".amazonaws.com"
	}
	custom := getenv("AWS_ENDPOINT_URL_S3")
	if custom == "" {
		custom = getenv("AWS_ENDPOINT_URL")
	}
	if custom != "" {
		u, err := url.Parse(custom)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" {
			return nil, fmt.Errorf("store %s: AWS_ENDPOINT_URL %q: want http://host[:port] or https://host[:port]", ref, custom)
		}
		endpoint, secure, lookup = u.Host, u.Scheme == "https", minio.BucketLookupPath
	}
	var creds *credentials.Credentials
	if id, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY"); id != "" || secret != "" {
		if id == "" || secret == "" {
			return nil, fmt.Errorf("store %s: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither", ref)
		}
		creds = credentials.NewStaticV4(id, secret, getenv("AWS_SESSION_TOKEN"))
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.FileAWSCredentials{Profile: getenv("AWS_PROFILE")},
			&credentials.IAM{}, // a pod's or an instance's role
		})
	}
	client, err := minio.New(endpoint, &minio.Options{Creds: creds, Secure: secure, Region: region, BucketLookup: lookup})
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", ref, err)
	}
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: staging folder: %w", ref, err)
	}
	if err := removeTemporaries(staging); err != nil {
		return nil, fmt.Errorf("store %s: staging folder: %w", ref, err)
	}
	b := &s3Backend{client: client, bucket: bucket, prefix: prefix, url: ref, staging: staging}
	ok, err := client.BucketExists(context.Background(), bucket)
	if err != nil {
		return nil, fmt.Errorf("store %s (endpoint %s): %w", ref, endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("store %s (endpoint %s): bucket %q does not exist", ref, endpoint, bucket)
	}
	return b, nil
}

func (b *s3Backend) String() string { return b.url }

func (b *s3Backend) StageDir(string) string { return b.staging }

func (b *s3Backend) s3err(key string, err error) error {
	if err == nil {
		return nil
	}
	where := "s3://" + b.bucket + "/" + b.prefix + key
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchKey, "NotFound":
		return fmt.Errorf("%s: %w", where, ErrNotFound)
	}
	return fmt.Errorf("%s: %w", where, err)
}

func (b *s3Backend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	obj, err := b.client.GetObject(ctx, b.bucket, b.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, b.s3err(key, err)
	}
	if _, err := obj.Stat(); err != nil { // the request is lazy: surface a missing key now
		obj.Close()
		return nil, b.s3err(key, err)
	}
	return obj, nil
}

func (b *s3Backend) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	info, err := b.client.StatObject(ctx, b.bucket, b.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, b.s3err(key, err)
	}
	return ObjectInfo{Key: key, Size: info.Size, Modified: info.LastModified}, nil
}

func (b *s3Backend) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	for o := range b.client.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.prefix + prefix, Recursive: true}) {
		if o.Err != nil {
			return nil, b.s3err(prefix, o.Err)
		}
		out = append(out, ObjectInfo{Key: strings.TrimPrefix(o.Key, b.prefix), Size: o.Size, Modified: o.LastModified})
	}
	return out, nil
}

func (b *s3Backend) Put(ctx context.Context, key, src string) error {
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	if strings.HasSuffix(key, ".json") {
		opts.ContentType = "application/json"
	}
	if _, err := b.client.FPutObject(ctx, b.bucket, b.prefix+key, src, opts); err != nil {
		return b.s3err(key, err)
	}
	return nil
}

func (b *s3Backend) Delete(ctx context.Context, key string) error {
	err := b.client.RemoveObject(ctx, b.bucket, b.prefix+key, minio.RemoveObjectOptions{})
	if err != nil && !errors.Is(b.s3err(key, err), ErrNotFound) {
		return b.s3err(key, err)
	}
	return nil
}
