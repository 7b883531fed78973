package core

import (
	"github.com/refiners-go/refiners/core/tensor"
)

// Conv2d is a 2-d convolution with weight [out, in/groups, k, k].
type Conv2d struct {
	In, Out  int64
	Kernel   [2]int64
	Stride   [2]int64
	Padding  [2]int64
	Dilation [2]int64
	Groups   int64
	UseBias  bool
	Precision
	Weight *tensor.Tensor
	Bias   *tensor.Tensor
}

// ConvOptions are the optional Conv2d hyper-parameters (zero values mean
// stride 1, padding 0, dilation 1, groups 1, with bias).
type ConvOptions struct {
	Stride, Padding, Dilation, Groups int64
	NoBias                            bool
	// OutputPadding is only used by ConvTranspose2d.
	OutputPadding int64
}

func (o ConvOptions) normalized() ConvOptions {
	if o.Stride == 0 {
		o.Stride = 1
	}
	if o.Dilation == 0 {
		o.Dilation = 1
	}
	if o.Groups == 0 {
		o.Groups = 1
	}
	return o
}

// NewConv2d declares a square-kernel Conv2d.
func NewConv2d(in, out, kernel int64, o ConvOptions) *Conv2d {
	o = o.normalized()
	return &Conv2d{
		In: in, Out: out, Kernel: [2]int64{kernel, kernel},
		Stride: [2]int64{o.Stride, o.Stride}, Padding: [2]int64{o.Padding, o.Padding},
		Dilation: [2]int64{o.Dilation, o.Dilation}, Groups: o.Groups, UseBias: !o.NoBias,
	}
}

func (l *Conv2d) Params() []Param {
	ps := []Param{{Name: "weight", Shape: []int64{l.Out, l.In / l.Groups, l.Kernel[0], l.Kernel[1]}, DType: l.DType, Value: &l.Weight}}
	if l.UseBias {
		ps = append(ps, Param{Name: "bias", Shape: []int64{l.Out}, DType: l.DType, Value: &l.Bias})
	}
	return ps
}

func (l *Conv2d) Describe() string {
	kv := []any{"in_channels", l.In, "out_channels", l.Out, "kernel_size", l.Kernel}
	kv = append(kv, convExtras(l.Stride, l.Padding, l.Dilation, l.Groups, l.UseBias)...)
	return weighted(describe("Conv2d", kv...), l.Params()[0])
}

// convExtras lists the hyper-parameters that differ from their defaults.
func convExtras(stride, padding, dilation [2]int64, groups int64, bias bool) []any {
	var kv []any
	if stride != [2]int64{1, 1} {
		kv = append(kv, "stride", stride)
	}
	if padding != [2]int64{0, 0} {
		kv = append(kv, "padding", padding)
	}
	if dilation != [2]int64{1, 1} {
		kv = append(kv, "dilation", dilation)
	}
	if groups != 1 {
		kv = append(kv, "groups", groups)
	}
	if !bias {
		kv = append(kv, "use_bias", false)
	}
	return kv
}

func (l *Conv2d) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "Conv2d", in, func(x *tensor.Tensor) *tensor.Tensor {
		if s := x.Shape(); len(s) >= 3 && s[len(s)-3] != l.In {
			f.Failf("Conv2d(in_channels=%d): input of shape %s, which has %d channels", l.In, FormatShape(s), s[len(s)-3])
			return nil
		}
		return f.Conv2d(x, l.Weight, l.Bias, tensor.Conv2dOptions{Stride: l.Stride, Padding: l.Padding, Dilation: l.Dilation, Groups: l.Groups})
	})
}

// ConvTranspose2d is the transposed convolution, weight [in, out/groups, k, k].
type ConvTranspose2d struct {
	Conv2d
	OutputPadding [2]int64
}

// NewConvTranspose2d declares a square-kernel ConvTranspose2d.
func NewConvTranspose2d(in, out, kernel int64, o ConvOptions) *ConvTranspose2d {
	c := NewConv2d(in, out, kernel, o)
	return &ConvTranspose2d{Conv2d: *c, OutputPadding: [2]int64{o.OutputPadding, o.OutputPadding}}
}

func (l *ConvTranspose2d) Params() []Param {
	ps := []Param{{Name: "weight", Shape: []int64{l.In, l.Out / l.Groups, l.Kernel[0], l.Kernel[1]}, DType: l.DType, Value: &l.Weight}}
	if l.UseBias {
		ps = append(ps, Param{Name: "bias", Shape: []int64{l.Out}, DType: l.DType, Value: &l.Bias})
	}
	return ps
}

func (l *ConvTranspose2d) Describe() string {
	kv := []any{"in_channels", l.In, "out_channels", l.Out, "kernel_size", l.Kernel,
		"stride", l.Stride, "padding", l.Padding, "dilation", l.Dilation, "output_padding", l.OutputPadding}
	if l.Groups != 1 {
		kv = append(kv, "groups", l.Groups)
	}
	if !l.UseBias {
		kv = append(kv, "use_bias", false)
	}
	return weighted(describe("ConvTranspose2d", kv...), l.Params()[0])
}

func (l *ConvTranspose2d) Forward(f *Frame, in ...*tensor.Tensor) (Tensors, error) {
	if err := loaded(l); err != nil {
		return nil, err
	}
	return unary(f, "ConvTranspose2d", in, func(x *tensor.Tensor) *tensor.Tensor {
		return f.ConvTranspose2d(x, l.Weight, l.Bias, tensor.Conv2dOptions{Stride: l.Stride, Padding: l.Padding, Dilation: l.Dilation, Groups: l.Groups}, l.OutputPadding)
	})
}
