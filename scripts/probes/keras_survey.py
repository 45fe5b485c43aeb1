"""Survey: Keras models exported to ONNX by tf2onnx (NHWC input, TensorFlow's op patterns), read
by the interpreter and compared with TensorFlow (forward) and with TensorFlow's input gradient.

Each model has random weights (BatchNorm statistics randomised too, so that no normalisation is
an identity), is exported with `tf2onnx.convert.from_keras` at opset 13, and is checked by the
`onnx_check` example (`cargo build --release -p cepa --example onnx_check`) against TensorFlow's
outputs and its gradient of the batch-mean cross-entropy toward class 0. Needs tensorflow-cpu,
tf2onnx and numpy (PyPI), e.g. in a venv under target/:
    python3 -m venv target/tf-venv && target/tf-venv/bin/pip install tensorflow-cpu tf2onnx
    target/tf-venv/bin/python scripts/probes/keras_survey.py [NAME ...]
writes scripts/probes/keras_survey.md (with every model, or only the NAMEs given); with
KERAS_SURVEY_KEEP=DIR the exported files are kept there."""
import json, os, subprocess, sys, tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras

L = keras.layers
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHECK = os.path.join(ROOT, 'target', 'release', 'examples', 'onnx_check')


def small_cnn(shape, k, softmax):
    """A course-style CNN that rescales its own 0-255 input (Keras' Rescaling), with BatchNorm,
    both poolings, Flatten, Dropout and Dense."""
    x = inp = keras.Input(shape)
    x = L.Rescaling(1 / 255.0)(x)
    x = L.Conv2D(16, 3, padding='same', activation='relu')(x)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, activation='relu')(x)
    x = L.AveragePooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation='relu')(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(k, activation='softmax' if softmax else None)(x)
    return keras.Model(inp, x)


def residual_mobile(shape, k):
    """Strided conv, BatchNorm, ReLU6, a depthwise block with a residual Add, global pooling."""
    x = inp = keras.Input(shape)
    x = L.Conv2D(16, 3, strides=2, padding='same')(x)
    x = L.ReLU()(L.BatchNormalization()(x))
    y = L.DepthwiseConv2D(3, padding='same')(x)
    y = L.ReLU(6.0)(L.BatchNormalization()(y))
    x = L.Add()([x, L.Conv2D(16, 1)(y)])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(k)(x))


def app(fn, side):
    return lambda: fn(weights=None, input_shape=(side, side, 3), classes=10, classifier_activation=None)


MODELS = {
    'small-cnn-softmax': (lambda: small_cnn((28, 28, 1), 10, True), 255.0),
    'small-cnn-logits': (lambda: small_cnn((32, 32, 3), 10, False), 255.0),
    'residual-mobile': (lambda: residual_mobile((32, 32, 3), 10), 1.0),
    'MobileNetV2': (app(keras.applications.MobileNetV2, 64), 1.0),
    'ResNet50': (app(keras.applications.ResNet50, 64), 1.0),
    'EfficientNetB0': (app(keras.applications.EfficientNetB0, 64), 255.0),
    'DenseNet121': (app(keras.applications.DenseNet121, 64), 1.0),
    'VGG16': (app(keras.applications.VGG16, 64), 1.0),
    'ConvNeXtTiny': (app(keras.applications.ConvNeXtTiny, 64), 255.0),
}


def randomise_norms(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n),
                               rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n)])


def survey(name, build, scale, tmp):
    rng = np.random.default_rng(0)
    tf.keras.utils.set_random_seed(0)
    model = build()
    randomise_norms(model, rng)
    spec = (tf.TensorSpec((None,) + model.input_shape[1:], tf.float32, name='input'),)
    path = os.path.join(tmp, name + '.onnx')
    keep = os.environ.get('KERAS_SURVEY_KEEP')  # a folder to keep the exports in
    if keep:
        path = os.path.join(keep, name + '.onnx')
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=path)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {'error': f'export failed: {type(e).__name__}: {str(e)[:120]}'}
    x = rng.uniform(0, scale, (4,) + model.input_shape[1:]).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = model(xt, training=False)
        loss = -tf.reduce_mean(tf.nn.log_softmax(out, axis=1)[:, 0])
    files = {}
    for key, value in [('x', x), ('y', out.numpy()), ('gx', tape.gradient(loss, xt).numpy())]:
        files[key] = os.path.join(tmp, f'{name}.{key}.npy')
        np.save(files[key], value)
    res = subprocess.run([CHECK, path, files['x'], files['y'], files['gx']],
                         capture_output=True, text=True)
    line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ''
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return {'error': (res.stderr or res.stdout)[-200:]}


def main():
    names = sys.argv[1:] or list(MODELS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            build, scale = MODELS[name]
            r = survey(name, build, scale, tmp)
            print(name, json.dumps(r), flush=True)
            rows.append((name, r))
    lines = [
        '# Keras models exported by tf2onnx, read by the interpreter',
        '',
        f'`scripts/probes/keras_survey.py` (TensorFlow {tf.__version__}, tf2onnx {tf2onnx.__version__}, '
        'opset 13, random weights, NHWC input, batch of 4). Forward: the largest difference from '
        "TensorFlow's output over its largest magnitude; gradient: the same for the input gradient "
        'of the batch-mean cross-entropy toward class 0. "not read": the interpreter refused the '
        'file (the reason is given); "export failed": tf2onnx could not write it.',
        '',
        '| model | forward | gradient | ops |',
        '|---|---|---|---|',
    ]
    for name, r in rows:
        if 'error' in r:
            what = 'export failed' if r['error'].startswith('export failed') else 'not read'
            if "'StatefulPartitionedCall'" in r['error']:
                what = 'export incomplete (tf2onnx left TensorFlow ops in the file), refused'
            lines.append(f"| {name} | {what}: {r['error'].strip()[:160]} | | |")
        else:
            lines.append(f"| {name} | {r['forward_rel_err']:.1e} | {r['grad_rel_err']:.1e} | "
                         f"{' '.join(r['ops'])} |")
    with open(os.path.join(HERE, 'keras_survey.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
    main()
