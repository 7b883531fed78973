// Package pluginproto is the plugin protocol: plugin.proto and its
// generated gRPC code. Plugins do not use it directly: the sdk package
// speaks it for them, with plain Go types. Regenerate with
// `go generate ./pluginproto` (needs protoc 3.21+, protoc-gen-go v1.36 and
// protoc-gen-go-grpc v1.6 on PATH).
package pluginproto

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative plugin.proto
