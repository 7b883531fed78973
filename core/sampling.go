package core

import (
	"fmt"

	"github.com/refiners-go/refiners/core/tensor"
)

// MaxPool2d pools [N, C, H, W].
type MaxPool2d struct {
	Kernel, Stride, Padding, Dilation int64
	CeilMode                          bool
}

// NewMaxPool2d declares a square max pool; stride 0 means the kernel size.
func NewMaxPool2d(kernel, stride, padding int64) *MaxPool2d {
	if stride == 0 {
		stride = kernel
	}
	return &MaxPool2d{Kernel: kernel, Stride: stride, Padding: padding, Dilation: 1}
}

func (l *MaxPool2d) Describe() string {
	kv := []any{"kernel_size", l.Kernel, "stride", l.Stride}
	if l.Padding != 0 {
		kv = append(kv, "padding", l.Padding)
	}
	return describe("MaxPool2d", kv...)
}

func (l *MaxPool2d) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	sq := func(v int64) [2]int64 { return [2]int64{v, v} }
	return unary(f, "MaxPool2d", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.MaxPool2d(x, sq(l.Kernel), sq(l.Stride), sq(l.Padding), sq(l.Dilation), l.CeilMode)
	})
}

// Interpolate resizes x [N, C, H, W] to the size given by its second input,
// an int64 tensor [H', W'] (sizes travel between layers as tensors).
type Interpolate struct{ Mode string }

func NewInterpolate(mode string) *Interpolate { return &Interpolate{Mode: mode} }

func (l *Interpolate) Describe() string {
	if l.Mode == tensor.Nearest {
		return "Interpolate()"
	}
	return describe("Interpolate", "mode", l.Mode)
}

func (l *Interpolate) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if len(in) != 2 {
		return nil, fmt.Errorf("Interpolate takes x and a size, got %d inputs", len(in))
	}
	size := f.Int64s(in[1])
	if f.Err() != nil {
		return nil, f.Err()
	}
	if len(size) != 2 {
		return nil, fmt.Errorf("Interpolate: size has %d values, want 2 (height, width)", len(size))
	}
	return Tensors{f.Interpolate(in[0], [2]int64{size[0], size[1]}, l.Mode)}, f.Err()
}

// shapeStack is the "sampling"/"shapes" context value: Downsample pushes
// the spatial size it saw, the matching Upsample pops it, so a U-Net
// restores odd sizes exactly.
type shapeStack struct{ sizes [][2]int64 }

// registerShape pushes the input's spatial size onto the stack (creating
// it at the nearest provider if needed), as Refiners' SetContext callback.
func registerShape() *SetContext {
	return &SetContext{Context: "sampling", Key: "shapes", Update: func(f *Frame, current any, x *tensor.Tensor) (any, error) {
		s := x.Shape()
		if len(s) != 4 {
			return nil, fmt.Errorf("Downsample: input shape %v, want [N, C, H, W]", s)
		}
		stack, _ := current.(*shapeStack)
		if stack == nil {
			stack = &shapeStack{}
		}
		stack.sizes = append(stack.sizes, [2]int64{s[2], s[3]})
		return stack, nil
	}}
}

// popShape outputs the last registered size, as Refiners' UseContext
// composed with list.pop.
func popShape() *UseContext {
	return &UseContext{Context: "sampling", Key: "shapes", Compose: func(f *Frame, v any) (*tensor.Tensor, error) {
		stack, _ := v.(*shapeStack)
		if stack == nil || len(stack.sizes) == 0 {
			return nil, fmt.Errorf("Upsample: no shape registered by a Downsample")
		}
		last := stack.sizes[len(stack.sizes)-1]
		stack.sizes = stack.sizes[:len(stack.sizes)-1]
		return f.FromInt64(last[:], 2), nil
	}}
}

// NewDownsample is a stride-`factor` 3×3 convolution; with padding 0 the
// input is first zero-padded on the right and bottom. It records the input
// size for the matching Upsample when registerShape is set.
func NewDownsample(channels, factor, padding int64, register bool) *Chain {
	c := NewNamed("Downsample", Sequence, NewConv2d(channels, channels, 3, ConvOptions{Stride: factor, Padding: padding}))
	c.Args = fmt.Sprintf("channels=%d, scale_factor=%d", channels, factor)
	if padding != 0 {
		c.Args += fmt.Sprintf(", padding=%d", padding)
	}
	if padding == 0 {
		c.Insert(0, NewFunc("zero_pad", func(f *Frame, in Tensors) (Tensors, error) {
			return unary(f, "zero_pad", in, func(x *tensor.Tensor) *tensor.Tensor { return f.Pad(x, []int64{0, 1, 0, 1}, "constant", 0) })
		}))
	}
	if register {
		c.Insert(0, registerShape())
	}
	return c
}

// NewUpsample doubles (or restores, from the shape a Downsample recorded)
// the spatial size by nearest interpolation, then applies a 3×3 conv.
// factor 0 means use the recorded shape.
func NewUpsample(channels, factor int64) *Chain {
	var size Module = popShape()
	if factor != 0 {
		size = NewFunc("static_shape", func(f *Frame, in Tensors) (Tensors, error) {
			x, err := one("static_shape", in)
			if err != nil {
				return nil, err
			}
			s := x.Shape()
			return Tensors{f.FromInt64([]int64{s[2] * factor, s[3] * factor}, 2)}, f.Err()
		})
	}
	c := NewNamed("Upsample", Sequence,
		NewParallel(NewIdentity(), size),
		NewInterpolate(tensor.Nearest),
		NewConv2d(channels, channels, 3, ConvOptions{Padding: 1}),
	)
	c.Args = fmt.Sprintf("channels=%d", channels)
	if factor != 0 {
		c.Args += fmt.Sprintf(", upsample_factor=%d", factor)
	}
	return c
}

// Pad pads the trailing dims (see tensor.Scope.Pad).
type Pad struct {
	Sizes []int64
	Mode  string
	Value float64
}

func NewPad(mode string, sizes ...int64) *Pad { return &Pad{Sizes: sizes, Mode: mode} }

// NewReflectionPad2d pads H and W by reflection.
func NewReflectionPad2d(padding int64) *Pad {
	return &Pad{Sizes: []int64{padding, padding, padding, padding}, Mode: "reflect"}
}

func (l *Pad) TypeName() string {
	if l.Mode == "reflect" && len(l.Sizes) == 4 {
		return "ReflectionPad2d"
	}
	return "Pad"
}

func (l *Pad) Describe() string {
	if l.TypeName() == "ReflectionPad2d" {
		return describe("ReflectionPad2d", "padding", l.Sizes)
	}
	return describe("Pad", "pad", l.Sizes, "mode", l.Mode)
}

func (l *Pad) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, l.TypeName(), in, func(x *tensor.Tensor) *tensor.Tensor { return f.Pad(x, l.Sizes, l.Mode, l.Value) })
}

// PixelUnshuffle moves Factor×Factor spatial blocks into channels.
type PixelUnshuffle struct{ Factor int64 }

func NewPixelUnshuffle(factor int64) *PixelUnshuffle { return &PixelUnshuffle{Factor: factor} }

func (l *PixelUnshuffle) Describe() string {
	return describe("PixelUnshuffle", "downscale_factor", l.Factor)
}

func (l *PixelUnshuffle) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	return unary(f, "PixelUnshuffle", in, func(x *tensor.Tensor) *tensor.Tensor { return f.PixelUnshuffle(x, l.Factor) })
}
